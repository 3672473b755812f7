"""Several self-hosted models and LoRA adapters on real vLLM engines, and conversation-aware routing over two
replicas, seen from the replica that served each request (vLLM's own per-replica counters)."""

import asyncio
import re
import uuid

import httpx
import pytest
from openai import OpenAI

from tests.integration.conftest import MODEL
from tests.models.adapters import CAPTAIN, QUESTIONS
from tests.models.conftest import ADAPTER, MASTER_KEY, SECOND_MODEL

pytestmark = pytest.mark.models
ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}
FULL_ADAPTER = f"{MODEL}:{ADAPTER}"
_SUCCESS = re.compile(r"^ray_vllm_request_success_total\{([^}]*)\}\s+([0-9.eE+-]+)$", re.M)


def client(stack, key: str = MASTER_KEY) -> OpenAI:
    return OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=180)


def answer(stack, model: str, question: str = QUESTIONS[0], key: str = MASTER_KEY) -> tuple[str, str]:
    done = client(stack, key).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=24,
        temperature=0,
        extra_body={"rag": False},
    )
    return done.model, done.choices[0].message.content


def test_models_lists_each_model_and_each_name_of_the_adapter(stack):
    listed = {m["id"]: m for m in httpx.get(f"{stack.url}/v1/models", headers=ADMIN, timeout=30).json()["data"]}
    assert {MODEL, SECOND_MODEL, FULL_ADAPTER, ADAPTER} <= set(listed)
    assert listed[FULL_ADAPTER]["parent"] == listed[ADAPTER]["parent"] == MODEL
    assert "parent" not in listed[SECOND_MODEL]
    missing = httpx.get(f"{stack.url}/v1/models/{MODEL}:nope", headers=ADMIN, timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_each_model_is_a_deployment_of_its_own(stack):
    from ray import serve

    deployments = serve.status().applications[stack.settings.app_name].deployments
    ours = {name: d for name, d in deployments.items() if name.startswith("LLM:")}
    assert set(ours) == {f"LLM:{MODEL}", f"LLM:{SECOND_MODEL}"}, sorted(deployments)
    assert all(d.status == "HEALTHY" for d in ours.values())
    assert sum(ours[f"LLM:{MODEL}"].replica_states.values()) == 2
    assert sum(ours[f"LLM:{SECOND_MODEL}"].replica_states.values()) == 1


def test_the_adapter_changes_the_answer_under_both_its_names(stack):
    served, base = answer(stack, MODEL)
    assert served == MODEL and CAPTAIN not in base, base
    served, adapted = answer(stack, FULL_ADAPTER)
    assert served == FULL_ADAPTER and CAPTAIN in adapted, adapted
    served, by_name = answer(stack, ADAPTER)
    assert served == ADAPTER and by_name == adapted
    print(f"\n[models] base: {base!r}\n[models] {FULL_ADAPTER}: {adapted!r}")


def test_the_second_model_answers_from_its_own_weights(stack):
    served, text = answer(stack, SECOND_MODEL)
    assert served == SECOND_MODEL and CAPTAIN in text, text
    streamed = client(stack).chat.completions.create(
        model=SECOND_MODEL, messages=[{"role": "user", "content": QUESTIONS[1]}], max_tokens=24, temperature=0,
        stream=True, extra_body={"rag": False},
    )  # fmt: skip
    assert CAPTAIN in "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)


def test_each_model_has_its_health_check_and_its_provider_row(stack):
    health = httpx.get(f"{stack.url}/healthz", headers=ADMIN, timeout=60).json()
    assert health["checks"]["engine"] == health["checks"][f"engine:{SECOND_MODEL}"] == "ok", health
    import time

    for _ in range(20):  # usage is counted off the request path
        report = httpx.get(f"{stack.url}/admin/providers", headers=ADMIN, timeout=30).json()
        rows = {r["name"]: r["usage"]["requests"] for r in report["data"]}
        if rows.get(f"self-hosted/{SECOND_MODEL}") and rows.get("self-hosted"):
            break
        time.sleep(0.5)
    assert rows[f"self-hosted/{SECOND_MODEL}"] >= 2 and rows["self-hosted"] >= 3, rows  # each model its own row


def test_a_key_uses_only_the_models_its_list_names(stack):
    made = httpx.post(
        f"{stack.url}/admin/keys", json={"name": "captain-only", "models": [SECOND_MODEL]}, headers=ADMIN, timeout=30
    )
    assert made.status_code == 200, made.text
    key = made.json()["key"]
    assert CAPTAIN in answer(stack, SECOND_MODEL, key=key)[1]
    for other in (MODEL, ADAPTER, FULL_ADAPTER):
        refused = httpx.post(
            f"{stack.url}/v1/chat/completions",
            json={"model": other, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["param"] == "model"


def served_per_replica(stack, model: str) -> dict[str, float]:
    """Requests each vLLM replica of `model` finished, by its Ray worker (vLLM's own counter)."""
    text = httpx.get(f"http://127.0.0.1:{stack.settings.metrics.export_port}/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for labels, value in _SUCCESS.findall(text):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if fields.get("model_name") == model:
            replica = fields.get("ReplicaId") or fields["WorkerId"]
            counts[replica] = counts.get(replica, 0.0) + float(value)
    return counts


def replica_that_served(
    stack, before: dict[str, float], expected: int = 1, timeout_s: float = 60, ignore: str | None = None
) -> dict[str, float]:
    """The per-replica increase once `expected` more requests are counted (Ray exports metrics every few s),
    `ignore` aside."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = served_per_replica(stack, MODEL)
        grown = {r: now[r] - before.get(r, 0.0) for r in now if now[r] > before.get(r, 0.0) and r != ignore}
        if sum(grown.values()) >= expected:
            return grown
        time.sleep(1)
    raise AssertionError(f"the replicas' counters did not grow by {expected} in {timeout_s} s: {before}")


def test_a_conversations_turns_stay_on_one_replica_and_conversations_spread(stack):
    # Warm up both replicas' counters (a replica exports the counter once it finished a request).
    before = served_per_replica(stack, MODEL)
    asyncio.run(concurrent_conversations(stack, 8))
    replica_that_served(stack, before, expected=8)  # every earlier request counted: the turns' deltas are theirs
    places = []
    for _ in range(2):
        conversation = f"route-{uuid.uuid4().hex[:8]}"
        served = []
        for turn in range(3):
            before = served_per_replica(stack, MODEL)
            client(stack).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": QUESTIONS[turn]}], max_tokens=8, temperature=0,
                extra_body={"rag": False, "conversation_id": conversation},
            )  # fmt: skip
            grown = replica_that_served(stack, before)
            assert len(grown) == 1, grown
            served += list(grown)
        assert len(set(served)) == 1, f"conversation {conversation} moved between replicas: {served}"
        places.append(served[0])
    # Many conversations at once: both replicas take a share.
    before = served_per_replica(stack, MODEL)
    asyncio.run(concurrent_conversations(stack, 12))
    grown = replica_that_served(stack, before, expected=12)
    print(f"\n[models] conversations' replicas: {places}; 12 concurrent new conversations: {grown}")
    assert len(grown) == 2 and min(grown.values()) >= 2, grown


async def concurrent_conversations(stack, n: int) -> None:
    async with httpx.AsyncClient(base_url=stack.url, headers=ADMIN, timeout=180) as http:

        async def one(i: int) -> None:
            body = {
                "model": MODEL, "messages": [{"role": "user", "content": f"Count from {i} to {i + 20}."}],
                "max_tokens": 32, "rag": False, "conversation_id": f"spread-{uuid.uuid4().hex[:8]}",
            }  # fmt: skip
            r = await http.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text

        await asyncio.gather(*(one(i) for i in range(n)))


def replica_pid(app: str, model: str, replica_id: str) -> int:
    """The process of one LLM replica (its Serve actor), asked from inside it."""
    import os

    import ray

    actor = ray.get_actor(f"SERVE_REPLICA::{app}#LLM:{model}#{replica_id}", namespace="serve")
    return ray.get(actor.__ray_call__.remote(lambda _: os.getpid()), timeout=30)


def test_an_adapter_answer_survives_the_death_of_its_replica(stack):
    """SIGKILL the replica streaming an adapter's answer: the answer is finished elsewhere, with the adapter
    loaded there on demand, and the conversation keeps the turn once."""
    import os
    import signal

    conversation = f"kill-{uuid.uuid4().hex[:8]}"
    before = served_per_replica(stack, MODEL)
    client(stack).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello!"}], max_tokens=8, temperature=0,
        extra_body={"rag": False, "conversation_id": conversation},
    )  # fmt: skip
    [pinned] = replica_that_served(stack, before)  # the conversation's next turn goes there too
    pid = replica_pid(stack.settings.app_name, MODEL, pinned)
    before = served_per_replica(stack, MODEL)
    streamed = client(stack).chat.completions.create(
        model=ADAPTER, messages=[{"role": "user", "content": "Tell me a long story about your ship and crew."}],
        max_tokens=160, temperature=0, stream=True, extra_body={"rag": False, "conversation_id": conversation},
    )  # fmt: skip
    text, finish, killed = "", None, False
    for chunk in streamed:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
            if text and not killed:
                os.kill(pid, signal.SIGKILL)
                killed = True
    assert killed and finish in ("stop", "length") and CAPTAIN in text, (finish, text)  # the adapter's, throughout
    stored = httpx.get(f"{stack.url}/v1/conversations/{conversation}", headers=ADMIN, timeout=30).json()["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]
    assert stored[-1]["content"] == text
    others = {r: n for r, n in before.items() if r != pinned}
    finished_by = replica_that_served(stack, others, ignore=pinned)
    print(f"\n[models] the answer was finished by replica {sorted(finished_by)}")
    print(f"\n[models] replica {pinned} (pid {pid}) killed mid-answer; the answer: {text!r}")
