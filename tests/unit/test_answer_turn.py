"""A token's chunk is built without a model per token (`Turn.delta_chunk`): what the journal keeps and the client
reads must be exactly what the models would have written, for any text the engine sends."""

import pytest

from core.models import Caller, ChatChunk, ChatRequest
from deployments.answer_turn import Turn, _choice
from deployments.providers.base import EngineDelta, GenerationParams
from state.journal import Event

TEXTS = [
    "Hello",
    " wörld ✓ 😀",
    'a "quoted" \\ back/slash',
    "line\nnext\ttab\r",
    "\x00\x01\x1f\x7f",
    "\u2028\u2029",
    "",
]


def a_turn() -> Turn:
    request = ChatRequest(model="m-1", messages=[{"role": "user", "content": "hi"}])
    caller = Caller(tenant="acme", key_id="k1", response_id="chatcmpl-1", reservation_id="r-1")
    return Turn(request, caller, "chatcmpl-1", request.model_dump()["messages"], GenerationParams(max_tokens=8), [])


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("finish_reason", [None, "stop", "length"])
@pytest.mark.parametrize("index", [0, 2])
def test_a_text_step_is_the_byte_for_byte_chunk_the_models_write(text, finish_reason, index):
    turn = a_turn()
    d = EngineDelta(text=text, finish_reason=finish_reason, index=index)
    model = turn.chunk(choices=[_choice(d)])
    built = turn.delta_chunk(d)
    assert isinstance(built, tuple)  # (no model on the token path)
    event, expected = Event.of(7, built), Event.of(7, model)
    assert event.chunk == expected.chunk
    assert event.text == expected.text  # the SSE frame's bytes
    assert ChatChunk.model_validate_json(event.text) == model  # what a client (or the ingress) reads back


def test_a_step_with_tool_calls_or_logprobs_goes_through_the_models():
    turn = a_turn()
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a"'}}
    logprobs = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]}
    for d in (EngineDelta(tool_calls=[call]), EngineDelta(text="Hi", logprobs=logprobs)):
        built = turn.delta_chunk(d)
        assert isinstance(built, ChatChunk)
        assert Event.of(1, built).chunk == turn.chunk(choices=[_choice(d)]).model_dump(mode="json", exclude_none=True)
