"""The LLM deployment's request router (deployments/llm_router.py): a conversation's turns stay on the replica
that served the last one while it runs and has room, other requests and first turns go to ray.serve.llm's
prefix router, and what it cannot match (no text, a replica it was not told of) falls back to power of two."""

import asyncio
from collections import OrderedDict
from types import SimpleNamespace

import pytest
from ray.serve.llm.request_router import PrefixCacheAffinityRouter

from deployments.llm_router import ConversationAffinityRouter

PREFIX_CHOICE = [["chosen by the prefix router"]]


def replica(name: str, max_ongoing: int = 64) -> SimpleNamespace:
    return SimpleNamespace(replica_id=name, max_ongoing_requests=max_ongoing)


def request(session: str = "", text: str = "hello") -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(session_id=session), args=[SimpleNamespace(messages=text)])


@pytest.fixture
def router(monkeypatch):
    """The router's own state, without Serve's: queue lengths from a dict, the prefix router a stub."""
    r = object.__new__(ConversationAffinityRouter)
    r._affinity_max_queue, r._max_conversations = 4, 3
    r._conversations, r.affinity_hits = OrderedDict(), 0
    r._use_replica_queue_len_cache, r._replica_queue_len_cache = True, {}
    r._replica_id_set = {"a", "b"}
    probed = []

    async def probe(replicas, attempt):
        probed.extend(x.replica_id for x in replicas)
        return [(x, 0) for x in replicas]

    async def prefix_choice(self, candidates, pending=None):
        return PREFIX_CHOICE

    r._probe_queue_lens, r.probed = probe, probed
    monkeypatch.setattr(PrefixCacheAffinityRouter, "choose_replicas", prefix_choice)
    inserted = []
    monkeypatch.setattr(PrefixCacheAffinityRouter, "on_request_routed", lambda self, p, rid, res: inserted.append(rid))
    r.inserted = inserted
    return r


def choose(router, candidates, pending):
    return asyncio.run(router.choose_replicas(candidates, pending))


def test_a_conversation_stays_on_its_replica_while_it_has_room(router):
    a, b = replica("a"), replica("b")
    assert choose(router, [a, b], request("t:c1")) == PREFIX_CHOICE  # first turn: the prefix router decides
    router.on_request_routed(request("t:c1"), "b", None)
    router._replica_queue_len_cache["b"] = 3
    assert choose(router, [a, b], request("t:c1")) == [[b]]  # next turn: where its KV cache is
    assert router.affinity_hits == 1
    router._replica_queue_len_cache["b"] = 4  # at affinity_max_queue: busy, the conversation may move
    assert choose(router, [a, b], request("t:c1")) == PREFIX_CHOICE
    assert choose(router, [a, b], request("t:other")) == PREFIX_CHOICE  # other conversations spread as before


def test_a_replica_that_is_gone_or_unknown_to_the_cache_is_probed_or_left(router):
    a, b = replica("a"), replica("b")
    router.on_request_routed(request("t:c1"), "b", None)
    assert choose(router, [a, b], request("t:c1")) == [[b]] and router.probed == ["b"]  # no cached length: asked
    assert choose(router, [a], request("t:c1")) == [[a]]  # one replica left: nothing to choose
    assert choose(router, [a, replica("c")], request("t:c1")) == PREFIX_CHOICE  # its replica died


def test_the_conversation_map_is_bounded_and_the_prefix_tree_learns_only_with_a_choice(router):
    for i in range(5):
        router.on_request_routed(request(f"t:c{i}"), "a", None)
    assert list(router._conversations) == ["t:c2", "t:c3", "t:c4"]  # least recently used out first
    assert router.inserted == ["a"] * 5
    router._replica_id_set = {"a"}
    router.on_request_routed(request("t:c9"), "a", None)
    assert router.inserted == ["a"] * 5  # one replica: no prefix-tree round trip


def test_a_prompt_without_text_falls_back_to_power_of_two(router):
    assert asyncio.run(router._prefix_match_best_replicas(request(text=""), [replica("a"), replica("b")])) == [[]]
    assert asyncio.run(router._prefix_match_best_replicas(None, [replica("a")])) == [[]]
