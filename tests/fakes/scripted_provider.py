"""A provider that streams scripted words (a fixed pace, no model): for AnswerRun tests and the journal cost
benchmark, where what is measured is our code around the engine, not the engine."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from core.models import Usage
from core.pricing import Price
from deployments.providers.base import EngineDelta


@dataclass
class Scripted:
    """Streams `words`, one per step (`delay_s` apart), then a finish and its usage."""

    words: list[str]
    delay_s: float = 0.0
    name: str = "scripted"
    kind: str = "self_hosted"
    completes: bool = True  # takes a raw prompt (str) as well as chat messages
    price: Price = field(default_factory=lambda: Price(1.0, 2.0))
    seen: list[list[dict]] = field(default_factory=list)
    affinities: list[str | None] = field(default_factory=list)  # the conversation each request was routed by

    def serves(self, model):
        return True

    def refuses(self, params):
        return None

    async def stream(self, model, messages, params, request_id, affinity=None):
        self.seen.append(messages)
        self.affinities.append(affinity)
        for word in self.words[: params.max_tokens]:
            await asyncio.sleep(self.delay_s)
            yield [EngineDelta(text=word)]
        done = min(len(self.words), params.max_tokens)
        yield [
            EngineDelta(
                finish_reason="stop", usage=Usage(prompt_tokens=10, completion_tokens=done, total_tokens=10 + done)
            )
        ]

    async def check_health(self):
        return None

    async def aclose(self):
        return None
