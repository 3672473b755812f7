"""Conversation state in Redis: history prepended, turns committed atomically, survives an orchestrator death."""

import time
import uuid

import pytest
import ray

from tests.integration.conftest import MODEL

pytestmark = pytest.mark.integration


def ask(openai_client, conversation_id, text, **extra):
    return openai_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": text}],
        temperature=0,
        max_tokens=30,
        extra_body={"conversation_id": conversation_id, "rag": False, **extra},
    )


def stored(http, conversation_id):
    response = http.get(f"/v1/conversations/{conversation_id}")
    assert response.status_code == 200, response.text
    return response.json()["messages"]


def test_turns_are_stored_and_prepended(openai_client, http):
    cid = f"conv-{uuid.uuid4().hex}"
    first = ask(openai_client, cid, "My name is Zebulon. Say hello to me.")
    assert first.model_extra["conversation_id"] == cid
    second = ask(openai_client, cid, "What is my name?")
    messages = stored(http, cid)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == "My name is Zebulon. Say hello to me."
    assert messages[1]["content"] == first.choices[0].message.content
    assert messages[3]["content"] == second.choices[0].message.content
    # The second prompt carried the first turn: more prompt tokens than the first turn itself held.
    assert second.usage.prompt_tokens >= first.usage.prompt_tokens + first.usage.completion_tokens
    assert "Zebulon" in second.choices[0].message.content


def test_the_header_works_like_the_body_field(http):
    cid = f"conv-{uuid.uuid4().hex}"
    response = http.post(
        "/v1/chat/completions",
        headers={"X-Conversation-Id": cid},
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5},
    )
    assert response.status_code == 200
    assert response.headers["x-conversation-id"] == cid and response.json()["conversation_id"] == cid
    assert len(stored(http, cid)) == 2


def test_an_invalid_header_id_is_400(http):
    response = http.post(
        "/v1/chat/completions",
        headers={"X-Conversation-Id": "bad id!"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "conversation_id"


def test_a_reused_x_request_id_does_not_drop_turns(http):
    cid = f"conv-{uuid.uuid4().hex}"
    for text in ("First.", "Second."):
        response = http.post(
            "/v1/chat/completions",
            headers={"x-request-id": "fixed-trace-id"},
            json={
                "model": MODEL,
                "conversation_id": cid,
                "rag": False,
                "max_tokens": 3,
                "messages": [{"role": "user", "content": text}],
            },
        )
        assert response.status_code == 200
    assert [m["content"] for m in stored(http, cid) if m["role"] == "user"] == ["First.", "Second."]


def test_a_stream_commits_once_the_answer_is_complete(openai_client, http):
    cid = f"conv-{uuid.uuid4().hex}"
    stream = openai_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to three."}],
        max_tokens=20,
        stream=True,
        extra_body={"conversation_id": cid, "rag": False},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert stored(http, cid)[-1] == {"role": "assistant", "content": text}


def test_a_failed_request_stores_nothing(http):
    cid = f"conv-{uuid.uuid4().hex}"
    huge = "word " * 6000
    response = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "conversation_id": cid, "messages": [{"role": "user", "content": huge}]},
    )
    assert response.status_code == 400
    assert http.get(f"/v1/conversations/{cid}").status_code == 404


def test_unknown_conversation_is_404(http):
    response = http.get("/v1/conversations/never-seen-this-one")
    assert response.status_code == 404 and response.json()["error"]["param"] == "conversation_id"


def _orchestrator_replicas(app_name):
    """Names of the live Orchestrator replica actors (Serve names them `SERVE_REPLICA::<app>#<deployment>#<id>`)."""
    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and a["name"].startswith(f"SERVE_REPLICA::{app_name}#Orchestrator#")
    ]


def test_conversation_survives_the_orchestrator_dying(openai_client, http, stack):
    cid = f"conv-{uuid.uuid4().hex}"
    ask(openai_client, cid, "Remember the number 4417.")
    victims = _orchestrator_replicas(stack.settings.app_name)
    assert victims
    for victim in victims:  # every replica, so nothing of the conversation can survive in process memory
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    deadline = time.monotonic() + 180
    while True:  # Serve notices the deaths and starts new replicas
        alive = _orchestrator_replicas(stack.settings.app_name)
        if alive and not set(victims) & set(alive) and http.get("/healthz").status_code == 200:
            break
        assert time.monotonic() < deadline, "Serve did not replace the orchestrator replicas"
        time.sleep(1)
    ask(openai_client, cid, "What number did I ask you to remember?")
    messages = stored(http, cid)
    assert len(messages) == 4 and messages[0]["content"] == "Remember the number 4417."
