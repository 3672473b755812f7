import pickle

from ray.exceptions import RayTaskError

from core.errors import InvalidRequest, NotFound, unwrap
from deployments.http_errors import error_body, sse_error_frame


def test_typed_errors_map_to_openai_bodies():
    status, body = error_body(InvalidRequest("bad max_tokens", param="max_tokens"), "rid")
    assert status == 400
    assert body == {
        "error": {
            "message": "bad max_tokens",
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": "invalid_value",
        }
    }


def test_unknown_errors_are_500_with_the_request_id():
    status, body = error_body(RuntimeError("secret internals"), "req-123")
    assert status == 500
    assert "req-123" in body["error"]["message"] and "secret" not in body["error"]["message"]
    assert isinstance(body["error"]["code"], str)


def test_errors_survive_pickling_with_their_param():
    err = pickle.loads(pickle.dumps(NotFound("no model", param="model")))
    assert isinstance(err, NotFound) and err.param == "model"


def test_ray_wrapped_errors_are_unwrapped():
    cause = NotFound("no such conversation", param="conversation_id")
    wrapped = RayTaskError("fn", "traceback", cause).as_instanceof_cause()
    assert unwrap(wrapped) is cause
    assert error_body(wrapped, None)[0] == 404


def test_stream_error_frame_is_an_sse_event():
    text = sse_error_frame(InvalidRequest("x"), None)
    assert text.startswith('data: {"error": ') and text.endswith("\n\n")


def test_a_full_serve_queue_is_a_503_with_retry_after():
    from ray.serve.exceptions import BackPressureError

    from deployments.http_errors import error_response

    exc = RayTaskError("fn", "traceback", BackPressureError(10, 10)).as_instanceof_cause()
    status, body = error_body(exc, "rid")
    assert status == 503 and body["error"]["code"] == "overloaded"
    response = error_response(BackPressureError(10, 10), "rid")
    assert response.status_code == 503 and response.headers["retry-after"] == "1"


def test_a_redis_outage_is_a_503_not_a_500():
    from redis.exceptions import ConnectionError as RedisConnectionError

    from deployments.http_errors import error_body

    status, body = error_body(RedisConnectionError("Connection refused"), "req-1")
    assert status == 503 and body["error"]["type"] == "service_unavailable"


def test_a_burst_larger_than_the_redis_pool_waits_for_connections_instead_of_failing():
    import asyncio

    from state.redis_client import async_redis
    from tests.conftest import REDIS_URL

    async def main():
        client = async_redis(REDIS_URL, max_connections=2, wait_s=5)
        try:
            return await asyncio.gather(*(client.execute_command("PING") for _ in range(50)))
        finally:
            await client.aclose()

    assert all(asyncio.run(main()))
