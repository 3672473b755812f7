"""Answers that outlive their connections, on the real stack: SSE event ids, resuming a stream after its
connection broke (starting_after, Last-Event-ID), reading a finished answer back, an answer whose client left
finishing in the background, and retries with one Idempotency-Key replaying instead of answering twice."""

import json
import threading
import uuid

import httpx
import pytest

from tests.integration.conftest import MASTER_KEY, MODEL

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
STORY = [{"role": "user", "content": "Write four sentences about a lighthouse keeper."}]


def body(cid: str, max_tokens: int = 48, **extra) -> dict:
    return {"model": MODEL, "messages": STORY, "max_tokens": max_tokens, "temperature": 0, "rag": False,
            "conversation_id": cid, **extra}  # fmt: skip


def events(lines) -> list[tuple[int, dict]]:
    """(id, data) of each SSE event, until [DONE]."""
    out, event_id = [], None
    for line in lines:
        if line.startswith("id: "):
            event_id = int(line[4:])
        elif line.startswith("data: "):
            if line == "data: [DONE]":
                break
            out.append((event_id, json.loads(line[6:])))
    return out


def text(evts: list[tuple[int, dict]]) -> str:
    return "".join((c["delta"].get("content") or "") for _, d in evts for c in d.get("choices", []))


def stored(base_url: str, cid: str) -> list[dict]:
    return httpx.get(f"{base_url}/v1/conversations/{cid}", headers=AUTH).json()["messages"]


def test_a_broken_stream_resumes_with_exactly_the_missing_events(base_url):
    cid = f"resume-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=120) as client:
        with client.stream("POST", "/v1/chat/completions", json=body(cid, stream=True)) as response:
            assert response.status_code == 200
            seen: list[tuple[int, dict]] = []
            event_id = None
            for line in response.iter_lines():  # read five events, then the connection breaks
                if line.startswith("id: "):
                    event_id = int(line[4:])
                elif line.startswith("data: {"):
                    seen.append((event_id, json.loads(line[6:])))
                    if len(seen) == 5:
                        break
        completion_id = seen[0][1]["id"]
        assert [i for i, _ in seen] == [1, 2, 3, 4, 5]  # every event carries its sequence number
        params = {"stream": "true", "starting_after": "5"}
        with client.stream("GET", f"/v1/chat/completions/{completion_id}", params=params) as resumed:
            assert resumed.status_code == 200
            rest = events(resumed.iter_lines())
        assert [i for i, _ in rest] == list(range(6, 6 + len(rest)))  # exactly the missing ones, in order
        whole = text(seen) + text(rest)
        assert rest[-1][1]["choices"][0]["finish_reason"] in ("stop", "length")
        # The same through Last-Event-ID, from event 3.
        with client.stream(
            "GET", f"/v1/chat/completions/{completion_id}", params={"stream": "true"}, headers={"Last-Event-ID": "3"}
        ) as again:
            from_three = events(again.iter_lines())
        assert text(seen[:3]) + text(from_three) == whole
        # Read back whole, and stored once in the conversation, equal to what the client got.
        answer = client.get(f"/v1/chat/completions/{completion_id}").json()
        assert answer["id"] == completion_id and answer["choices"][0]["message"]["content"] == whole
        assert stored(base_url, cid) == [STORY[0], {"role": "assistant", "content": whole}]


def test_an_answer_whose_client_left_finishes_and_is_stored(base_url):
    cid = f"left-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=120) as client:
        with client.stream("POST", "/v1/chat/completions", json=body(cid, stream=True)) as response:
            completion_id = response.headers["x-llmserve-response-id"]
            for line in response.iter_lines():
                if line.startswith("data: "):
                    break  # one event, then gone
        answer = client.get(f"/v1/chat/completions/{completion_id}").json()  # waits for the end
        content = answer["choices"][0]["message"]["content"]
        assert content and answer["choices"][0]["finish_reason"] in ("stop", "length")
        assert stored(base_url, cid)[-1] == {"role": "assistant", "content": content}


def test_a_retry_with_the_same_idempotency_key_replays_the_answer_and_stores_it_once(base_url):
    cid, key = f"idem-{uuid.uuid4().hex[:8]}", f"key-{uuid.uuid4().hex}"
    headers = {**AUTH, "Idempotency-Key": key}
    with httpx.Client(base_url=base_url, headers=headers, timeout=120) as client:
        first = client.post("/v1/chat/completions", json=body(cid, max_tokens=16))
        again = client.post("/v1/chat/completions", json=body(cid, max_tokens=16))
        assert first.status_code == again.status_code == 200
        assert again.json()["id"] == first.json()["id"]
        assert again.json()["choices"] == first.json()["choices"]
        assert len(stored(base_url, cid)) == 2  # one turn, not two
        # Streamed, the retry is the same answer's events.
        replayed = events(client.post("/v1/chat/completions", json=body(cid, max_tokens=16, stream=True)).iter_lines())
        assert text(replayed) == first.json()["choices"][0]["message"]["content"]
        reused = client.post("/v1/chat/completions", json=body(cid, max_tokens=17))
        assert reused.status_code == 400 and reused.json()["error"]["code"] == "idempotency_key_reused"


def test_a_retry_of_a_running_answer_follows_it_from_the_start_and_is_charged_once(base_url):
    cid, key = f"attach-{uuid.uuid4().hex[:8]}", f"key-{uuid.uuid4().hex}"
    api_key = httpx.post(f"{base_url}/admin/keys", json={"name": f"retrier-{key[-6:]}"}, headers=AUTH).json()["key"]
    own = {"Authorization": f"Bearer {api_key}"}
    headers = {**own, "Idempotency-Key": key}
    results: dict[str, list] = {}

    def consume(name: str) -> None:
        with (
            httpx.Client(base_url=base_url, headers=headers, timeout=120) as client,
            client.stream("POST", "/v1/chat/completions", json=with_usage) as response,
        ):
            results[name] = events(response.iter_lines())

    with_usage = body(cid, stream=True, stream_options={"include_usage": True})
    first = threading.Thread(target=consume, args=("first",))
    first.start()
    threading.Event().wait(1.0)  # the first is under way
    consume("retry")
    first.join()
    assert text(results["retry"]) == text(results["first"]) and results["retry"][0][0] == 1
    conversation = httpx.get(f"{base_url}/v1/conversations/{cid}", headers=own).json()["messages"]
    assert len(conversation) == 2
    # The retry's own reservation is given back, the one answer charged once (its usage chunk's tokens).
    (usage_chunk,) = [d["usage"] for _, d in results["first"] if d.get("usage")]
    for _ in range(20):
        usage = httpx.get(f"{base_url}/v1/usage", headers=own).json()
        if usage["reserved_usd"] < 1e-12:
            break
        threading.Event().wait(0.25)
    assert usage["reserved_usd"] < 1e-12, usage
    assert usage["completion_tokens"] == usage_chunk["completion_tokens"], usage


def test_another_key_cannot_resume_or_read_an_answer(base_url):
    other = httpx.post(f"{base_url}/admin/keys", json={"name": "outsider"}, headers=AUTH).json()["key"]
    answer = httpx.post(f"{base_url}/v1/chat/completions", json=body(f"mine-{uuid.uuid4().hex[:6]}", 4), headers=AUTH)
    completion_id = answer.json()["id"]
    for params in ({}, {"stream": "true", "starting_after": "0"}):
        response = httpx.get(
            f"{base_url}/v1/chat/completions/{completion_id}",
            params=params,
            headers={"Authorization": f"Bearer {other}"},
        )
        assert response.status_code == 404


def test_a_resume_point_that_is_no_event_id_is_a_clear_400(base_url):
    answer = httpx.post(f"{base_url}/v1/chat/completions", json=body(f"bad-{uuid.uuid4().hex[:6]}", 4), headers=AUTH)
    completion_id = answer.json()["id"]
    url = f"{base_url}/v1/chat/completions/{completion_id}"
    for last_event_id in ("²", "-1", "abc", "9" * 40):  # "²" is a digit to str.isdigit, not to int()
        headers = {**AUTH, "Last-Event-ID": last_event_id.encode("latin-1")}  # as a client's raw header bytes
        response = httpx.get(url, params={"stream": "true"}, headers=headers)
        assert response.status_code == 400, last_event_id
        error = response.json()["error"]
        assert error["param"] == "Last-Event-ID" and error["type"] == "invalid_request_error"
    response = httpx.get(url, params={"stream": "true", "starting_after": "-1"}, headers=AUTH)
    assert response.status_code == 400 and response.json()["error"]["param"]
