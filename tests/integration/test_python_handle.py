"""Python callers in the same Ray cluster: typed methods on the app handle, no HTTP."""

import uuid

import pytest
from ray import serve

from serve_app import ChatChunk, ChatRequest, ChatResponse
from tests.integration.conftest import MODEL

pytestmark = pytest.mark.integration


def request(**extra):
    return ChatRequest(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=30,
        **extra,
    )


def test_whole_answer_through_the_handle(stack):
    handle = serve.get_app_handle(stack.settings.app_name)
    response = handle.chat.remote(request()).result(timeout_s=120)
    assert isinstance(response, ChatResponse)
    assert "Paris" in response.choices[0].message.content
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_streamed_answer_through_the_handle(stack):
    handle = serve.get_app_handle(stack.settings.app_name).options(stream=True)
    chunks = list(handle.chat_stream.remote(request()))
    assert all(isinstance(c, ChatChunk) for c in chunks)
    assert "Paris" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_conversation_through_the_handle_is_the_same_as_over_http(stack, http):
    handle = serve.get_app_handle(stack.settings.app_name)
    cid = f"py-{uuid.uuid4().hex}"
    handle.chat.remote(request(conversation_id=cid, rag=False)).result(timeout_s=120)
    messages = handle.get_conversation.remote(cid).result(timeout_s=30).messages
    assert len(messages) == 2
    assert http.get(f"/v1/conversations/{cid}").json()["messages"][1]["content"] == messages[1].content


def test_typed_errors_reach_python_callers(stack):
    from core.errors import NotFound

    handle = serve.get_app_handle(stack.settings.app_name)
    with pytest.raises(NotFound):
        handle.chat.remote(request().model_copy(update={"model": "nope"})).result(timeout_s=60)


def test_a_handle_call_must_name_a_tenant_that_exists(stack, http):
    """As an admin key's X-LLMServe-Tenant: objects and metrics belong only to tenants an admin made."""
    from core.errors import NotFound

    handle = serve.get_app_handle(stack.settings.app_name)
    ghost = f"ghost-{uuid.uuid4().hex[:8]}"
    with pytest.raises(NotFound, match=ghost):
        handle.chat.remote(request(), tenant=ghost).result(timeout_s=120)
    assert http.put(f"/admin/tenants/{ghost}", json={}).status_code == 200
    assert "Paris" in handle.chat.remote(request(), tenant=ghost).result(timeout_s=120).choices[0].message.content
    assert http.delete(f"/admin/tenants/{ghost}").status_code == 200


def test_the_self_hosted_provider_sees_the_replicas_serve_runs(stack):
    """The count a scaled-to-zero model is recognised by (deployments/providers/self_hosted.py running_replicas,
    read from Ray's router internals): it must match what Serve reports, or routing would take a running model
    for a cold one (or never see one cold)."""
    import time

    from deployments.providers.self_hosted import running_replicas

    name = f"LLM:{MODEL}"
    handle = serve.get_deployment_handle(name, stack.settings.app_name)
    handle.check_health.remote().result(timeout_s=60)
    status = serve.status().applications[stack.settings.app_name].deployments[name]
    serving = status.replica_states.get("RUNNING", 0)
    deadline = time.monotonic() + 10
    while running_replicas(handle) != serving and time.monotonic() < deadline:
        time.sleep(0.1)
    assert serving >= 1 and running_replicas(handle) == serving
