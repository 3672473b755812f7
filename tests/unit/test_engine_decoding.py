import json

import pytest

from core.errors import EngineError, InvalidRequest
from deployments.providers.self_hosted import decode_sse_items


def frame(payload):
    return f"data: {json.dumps(payload)}\n\n"


def chunk(text=None, finish=None):
    return {"choices": [{"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}]}


def test_a_batched_item_yields_every_frame_in_order():
    item = [frame(chunk("Hel")) + frame(chunk("lo")), frame(chunk(finish="stop")), "data: [DONE]\n\n"]
    deltas = decode_sse_items(item)
    assert [d.text for d in deltas] == ["Hel", "lo", ""]
    assert deltas[-1].finish_reason == "stop"


def test_usage_frame_is_decoded():
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    [delta] = decode_sse_items([frame({"choices": [], "usage": usage})])
    assert delta.usage.total_tokens == 7


def test_an_error_frame_raises_a_typed_error():
    body = {
        "error": {
            "message": "This model's maximum context length is 2048 tokens",
            "type": "BadRequestError",
            "code": 400,
        }
    }
    with pytest.raises(InvalidRequest) as info:
        decode_sse_items([frame(body)])
    assert info.value.param == "messages"
    with pytest.raises(EngineError):
        decode_sse_items([frame({"error": {"message": "boom", "type": "InternalServerError", "code": 500}})])


def test_an_error_response_object_raises():
    class Info:
        def model_dump(self):
            return {"message": "bad", "type": "BadRequestError", "code": 400}

    class ErrorResponse:
        error = Info()

    with pytest.raises(InvalidRequest):
        decode_sse_items([ErrorResponse()])
