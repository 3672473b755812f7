"""An answer's chunks as they cross from the orchestrator to the ingress: each one's JSON, made once.

The orchestrator serialises a chunk once, for the journal and for this hop alike (state/journal.py `Event.text`);
the ingress writes that JSON into its SSE frame as it is and parses it only where it needs a field (another
response shape, the JSON answer, the Python handle), so a streamed token is not rebuilt as a model on the way.
"""

from __future__ import annotations

from core.models import ChatChunk
from state.journal import Event

# What one orchestrator stream item holds: (sequence number, the chunk's JSON, whether it is the usage chunk).
Wire = list[tuple[int, str, bool]]


class Frame:
    """One chunk at the ingress: its JSON as journaled, and the parsed model when a field is asked for."""

    __slots__ = ("_chunk", "json", "usage")

    def __init__(self, json: str, usage: bool = False, chunk: ChatChunk | None = None) -> None:
        self.json = json
        self.usage = usage  # the run's usage chunk (a client that did not ask for it does not get it)
        self._chunk = chunk

    @property
    def chunk(self) -> ChatChunk:
        if self._chunk is None:
            self._chunk = ChatChunk.model_validate_json(self.json)
        return self._chunk

    @classmethod
    def of(cls, chunk: ChatChunk) -> Frame:
        """A frame made from a model (for tests: the ingress gets its frames from the wire)."""
        return cls(chunk.model_dump_json(exclude_none=True), chunk.usage is not None, chunk)


Batch = list[tuple[int, Frame]]


def to_wire(events: list[Event]) -> Wire:
    return [(e.seq, e.text, "usage" in e.chunk) for e in events]


def from_wire(items: Wire, after_seq: int) -> Batch:
    """The frames after `after_seq` (a stream picked up on another replica may repeat some)."""
    return [(seq, Frame(text, usage)) for seq, text, usage in items if seq > after_seq]
