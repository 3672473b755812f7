"""Auth and bad input: OpenAI-style error bodies with the right status, never a 500."""

import httpx
import openai
import pytest

from tests.integration.conftest import MODEL

pytestmark = pytest.mark.integration
GOOD = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["code"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def test_no_key_is_401(base_url):
    response = httpx.post(f"{base_url}/v1/chat/completions", json=GOOD)
    error = assert_error(response, 401)
    assert error["code"] == "invalid_api_key"


def test_wrong_key_is_401_even_with_a_malformed_body(base_url):
    response = httpx.post(
        f"{base_url}/v1/chat/completions", content=b"{not json", headers={"Authorization": "Bearer sk-wrong"}
    )
    assert_error(response, 401)
    assert_error(httpx.get(f"{base_url}/v1/models", headers={"Authorization": "Basic abc"}), 401)


def test_the_sdk_raises_authentication_error(base_url):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_healthz_needs_no_key_and_checks_everything(base_url):
    response = httpx.get(f"{base_url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"redis": "ok", "chroma": "ok", "engine": "ok"}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL}, "messages"),
        ({**GOOD, "messages": "hello"}, "messages"),
        ({**GOOD, "messages": []}, "messages"),
        ({**GOOD, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({**GOOD, "temperature": 9}, "temperature"),
        ({**GOOD, "max_tokens": -1}, "max_tokens"),
        ({**GOOD, "max_tokens": 100000}, "max_tokens"),
        ({**GOOD, "n": 9}, "n"),
        ({**GOOD, "conversation_id": "has spaces"}, "conversation_id"),
        ({**GOOD, "rag": {"top_k": 1000}}, "rag.top_k"),
        ({**GOOD, "rag": {"collection": "x"}}, "rag.collection"),
        ({**GOOD, "stream": "yes please"}, "stream"),
    ],
)
def test_bad_bodies_are_400_naming_the_param(http, body, param):
    assert_error(http.post("/v1/chat/completions", json=body), 400, param)


def test_invalid_json_is_400(http):
    response = http.post("/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"})
    error = assert_error(response, 400)
    assert error["code"] == "invalid_json" and error["param"] is None
    undecodable = http.post("/v1/chat/completions", content=b"\xff\xfe{", headers={"content-type": "application/json"})
    assert assert_error(undecodable, 400)["code"] in ("invalid_json", "invalid_body")


def test_unknown_model_is_404(http, openai_client):
    assert_error(http.post("/v1/chat/completions", json={**GOOD, "model": "gpt-9"}), 404, "model")
    with pytest.raises(openai.NotFoundError):
        openai_client.chat.completions.create(model="gpt-9", messages=GOOD["messages"], stream=True)


def test_prompt_longer_than_the_context_is_400(http):
    huge = "word " * 6000
    response = http.post("/v1/chat/completions", json={**GOOD, "messages": [{"role": "user", "content": huge}]})
    assert assert_error(response, 400, "messages")["code"] == "context_length_exceeded"


def test_unknown_route_is_an_openai_404(http):
    assert_error(http.get("/v1/nothing-here"), 404)


def test_the_sdk_raises_bad_request(openai_client):
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.chat.completions.create(model=MODEL, messages=GOOD["messages"], temperature=7)
    assert info.value.body["param"] == "temperature"
