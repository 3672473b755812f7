"""Cache-aware routing to the vLLM replicas: the request router of the LLM deployment (ray.serve.llm's
`request_router_config`), run by every caller of its handle (our orchestrators).

- **Conversation affinity.** A request that names a conversation (the handle's `session_id`, set by the
  self-hosted provider to `<tenant>:<conversation>`) goes to the replica that served the conversation's last turn,
  where its prefix is in the KV cache, while that replica runs and its queue is below `affinity_max_queue`.
  Otherwise, and for a conversation's first turn, the prefix router below decides, and the conversation follows
  the replica it chose.
- **Prefix affinity** for everything else: ray.serve.llm's own `PrefixCacheAffinityRouter` (a prefix tree of
  the prompts each replica served; the replica with the longest match while loads are within
  `imbalanced_threshold` of each other, else power of two choices).

With one replica there is nothing to choose: no prefix-tree round trips are made. Each orchestrator replica
keeps its own conversation map (bounded, least recently used first out); the prefix tree is one actor per
deployment, shared by all of them, and later turns extend earlier prompts, so a conversation whose turns reach
another orchestrator usually lands on the same replica too.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from ray.serve._private.request_router import PowerOfTwoChoicesRequestRouter
from ray.serve.llm.request_router import PrefixCacheAffinityRouter

logger = logging.getLogger("llmserve.llm_router")


class ConversationAffinityRouter(PrefixCacheAffinityRouter):
    def initialize_state(self, affinity_max_queue: int = 8, max_conversations: int = 100_000, **prefix: Any) -> None:
        super().initialize_state(**prefix)
        self._affinity_max_queue = affinity_max_queue
        self._max_conversations = max_conversations
        self._conversations: OrderedDict[str, Any] = OrderedDict()  # session id -> ReplicaID
        self.affinity_hits = 0  # turns sent to their conversation's replica (for tests and debugging)

    async def choose_replicas(self, candidate_replicas: list, pending_request: Any = None) -> list[list]:
        if len(candidate_replicas) <= 1:
            return [candidate_replicas]
        pinned = await self._conversation_replica(candidate_replicas, pending_request)
        if pinned is not None:
            self.affinity_hits += 1
            return [[pinned]]  # if it turns the request away, the next round falls through to the prefix router
        if _adapter(pending_request):
            # A LoRA adapter's request: Serve's multiplexed routing (replicas that hold the adapter first). The
            # prefix router would ask for it a second time, which then prefers replicas with the fewest adapters.
            return await PowerOfTwoChoicesRequestRouter.choose_replicas(self, candidate_replicas, pending_request)
        return await super().choose_replicas(candidate_replicas, pending_request)

    async def _conversation_replica(self, candidate_replicas: list, pending_request: Any) -> Any:
        """The conversation's replica, when it still runs and has room; else None."""
        session = _session(pending_request)
        replica_id = self._conversations.get(session) if session else None
        replica = next((r for r in candidate_replicas if r.replica_id == replica_id), None)
        if replica is None:
            return None
        queue = self._replica_queue_len_cache.get(replica_id) if self._use_replica_queue_len_cache else None
        if queue is None:
            [(_, queue)] = await self._probe_queue_lens([replica], 0)
        if queue is None or queue >= min(self._affinity_max_queue, replica.max_ongoing_requests):
            return None  # busy (or not answering): the conversation moves, with its next prefix
        return replica

    async def _prefix_match_best_replicas(self, pending_request: Any, candidate_replicas: list) -> list[list]:
        """ray.serve.llm's prefix match, guarded: a prompt with no text (token ids) cannot be matched (it would
        divide by its length), and the shared prefix tree may name a replica this router has not been told of
        yet (another orchestrator saw it first); both fall back to power of two choices."""
        try:
            if pending_request is None or not self._extract_text_from_request(pending_request):
                return [[]]
            return await super()._prefix_match_best_replicas(pending_request, candidate_replicas)
        except (KeyError, ValueError) as exc:
            logger.debug("prefix match skipped: %r", exc)
            return [[]]

    def on_request_routed(self, pending_request: Any, replica_id: Any, result: Any) -> None:
        session = _session(pending_request)
        if session:
            self._conversations[session] = replica_id
            self._conversations.move_to_end(session)
            while len(self._conversations) > self._max_conversations:
                self._conversations.popitem(last=False)
        # One replica: nothing to learn. An adapter's prompt is not the base model's prefix (vLLM keys its cache by
        # adapter), so it stays out of the prefix tree.
        if len(self._replica_id_set) > 1 and not _adapter(pending_request):
            try:
                super().on_request_routed(pending_request, replica_id, result)
            except ValueError as exc:  # a call without a prompt (a health check)
                logger.debug("not in the prefix tree: %r", exc)


def _adapter(pending_request: Any) -> str:
    metadata = getattr(pending_request, "metadata", None)
    return getattr(metadata, "multiplexed_model_id", None) or ""


def _session(pending_request: Any) -> str:
    metadata = getattr(pending_request, "metadata", None)
    return getattr(metadata, "session_id", None) or ""
