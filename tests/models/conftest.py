"""A stack of its own with three real vLLM engines: SmolLM2 on two replicas with a LoRA adapter trained here
(tests/models/adapters.py), and the adapter merged into a second model with its own deployment."""

import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL, running_stack
from tests.integration.conftest import MODEL, MODEL_CACHE_DIR
from tests.models.adapters import make_adapter
from tests.services import free_port

MASTER_KEY = "sk-models-" + uuid.uuid4().hex
SECOND_MODEL = "smollm2-captain"
ADAPTER = "captain"


@pytest.fixture(scope="module")
def adapters() -> Path:
    started = time.perf_counter()
    folder = make_adapter(Path(MODEL_CACHE_DIR) / MODEL, Path(MODEL_CACHE_DIR) / "test-lora-adapters")
    print(f"\n[models] adapter ready in {time.perf_counter() - started:.1f} s")
    return folder


@pytest.fixture(scope="module")
def stack(tmp_path_factory, adapters):
    from pydantic import SecretStr

    from core.settings import Settings

    prefix = f"llmserve-models-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        app_name="llmserve-models",
        master_key=SecretStr(MASTER_KEY),
        data_dir=tmp_path_factory.mktemp("llmserve-models"),
        server={"port": free_port(), "proxy_port": free_port()},
        metrics={"export_port": free_port(), "flush_interval_s": 0.5},
        state={"redis_url": REDIS_URL, "redis_prefix": prefix, "response_cache": False},
        engine={
            "model_cache_dir": MODEL_CACHE_DIR,
            "min_replicas": 2,
            "max_replicas": 2,
            "lora_path": str(adapters),
            "lora_adapters": [ADAPTER],
            # Sequential test requests never queue: a small imbalance lets concurrent new conversations spread.
            "prefix_imbalanced_threshold": 1,
            "affinity_max_queue": 4,
        },
        extra_models=[
            {"model": str(adapters / f"{ADAPTER}-merged"), "served_model_name": SECOND_MODEL, "min_replicas": 1}
        ],
        limits={"max_tokens_cap": 256},
    )
    with running_stack(settings, "models") as local:
        yield local
