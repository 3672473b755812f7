"""One real app for the whole session: Ray Serve, the vLLM CPU engine with SmolLM2, Redis on 127.0.0.1:6379,
on-disk Chroma and W&B offline, started by the same code as `llmserve up`."""

import os
import uuid

import httpx
import pytest

from tests.conftest import REDIS_URL, running_stack
from tests.services import free_port

MASTER_KEY = "sk-test-" + uuid.uuid4().hex
MODEL = "SmolLM2-135M-Instruct"
# Requests in flight per model before 503: above any test's concurrency, small enough to fill in a test.
ADMISSION_CAPACITY = 24
FALLBACK_ONLY_MODEL = "managed-only"
FALLBACK_CONTINUATION = " [continued by the fallback provider]"
BATCH_VISIBILITY_S = 8.0
MODEL_CACHE_DIR = os.environ.get("LLMSERVE_TEST_MODEL_CACHE_DIR", os.path.expanduser("~/.llmserve/models"))


@pytest.fixture(scope="session")
def fallback():
    """A fake managed API (real OpenAI protocol over HTTP) configured behind the self-hosted engine: it serves
    `FALLBACK_ONLY_MODEL` itself and continues SmolLM2's answers when the engine fails mid-stream."""
    from tests.fakes.managed_api import Script, serve_fake

    script = Script(text="Answered by the fallback provider.", continuation=FALLBACK_CONTINUATION)
    with serve_fake("openai", script) as fake:
        yield fake


@pytest.fixture(scope="session")
def otlp(tmp_path_factory):
    """A real OTLP/HTTP receiver process the stack exports its traces to (tests/fakes/otlp_receiver.py)."""
    from tests.fakes.otlp_receiver import run_receiver

    with run_receiver(tmp_path_factory.mktemp("otlp") / "spans.jsonl") as receiver:
        yield receiver


@pytest.fixture(scope="session")
def stack(tmp_path_factory, fallback, otlp):
    from pydantic import SecretStr

    from core.provider_config import ProviderConfig
    from core.settings import Settings

    prefix = f"llmserve-it-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        app_name="llmserve-test",
        master_key=SecretStr(MASTER_KEY),
        data_dir=tmp_path_factory.mktemp("llmserve-data"),
        server={"port": free_port(), "proxy_port": free_port()},
        metrics={"export_port": free_port(), "flush_interval_s": 0.5, "otlp_endpoint": otlp.url},
        # The response cache only for keys that ask (tests/integration/test_response_cache.py): the others'
        # repeated greedy requests must reach the providers.
        state={"redis_url": REDIS_URL, "redis_prefix": prefix, "response_cache": False},
        engine={"model_cache_dir": MODEL_CACHE_DIR},
        limits={"max_tokens_cap": 512, "max_inflight_per_model": ADMISSION_CAPACITY},
        batch={
            # a short visibility timeout so a killed worker's requests come back within a test
            "visibility_timeout_s": BATCH_VISIBILITY_S,
            "max_inflight": 4,
            "queue_per_replica": 10,  # small, so a test batch makes the workers scale out
            "worker_max_replicas": 2,
        },
        routing={
            "providers": [
                ProviderConfig(name="self-hosted", kind="self_hosted"),
                ProviderConfig(
                    name="fallback",
                    kind="openai",
                    base_url=fallback.url,
                    models={MODEL: "fake-model", FALLBACK_ONLY_MODEL: "fake-model"},
                    price_input_per_mtok=1.0,
                    price_output_per_mtok=2.0,
                ),
            ]
        },
    )
    with running_stack(settings, "stack") as local:
        yield local


@pytest.fixture(scope="session")
def base_url(stack):
    return stack.url


@pytest.fixture(scope="session")
def openai_client(base_url):
    from openai import OpenAI

    return OpenAI(base_url=f"{base_url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(base_url):
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=120) as client:
        yield client
