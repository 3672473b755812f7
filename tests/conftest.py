import contextlib
import os
import uuid

import pytest
import redis.asyncio as aioredis

REDIS_URL = os.environ.get("LLMSERVE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def drop_keys(prefix: str) -> None:
    """Delete every key under `prefix` in the test Redis."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


@contextlib.contextmanager
def running_stack(settings, label: str):
    """The app of `settings` started as `llmserve up` starts it, then shut down and its Redis keys dropped."""
    import time

    from serve_app.runtime import start_local

    started = time.perf_counter()
    local = start_local(settings)
    print(f"\n[{label}] ready in {time.perf_counter() - started:.1f} s at {local.url}")
    try:
        yield local
    finally:
        local.shutdown()
        drop_keys(settings.state.redis_prefix)


@pytest.fixture
def redis_prefix():
    """A unique key prefix per test, removed afterwards, so tests never see each other's keys."""
    prefix = f"llmserve-test-{uuid.uuid4().hex[:8]}"
    yield prefix
    drop_keys(prefix)


@contextlib.asynccontextmanager
async def redis_client():
    """An asyncio Redis client for one test body, closed afterwards."""
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A model folder with only what token counting reads: a small byte-level BPE tokenizer (trained here, in
    well under a second), its config and a ChatML chat template (SmolLM2's, without its default system line)."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = ["The capital of France is Paris.", "message number one two three", "hello there, how are you?"] * 50
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "bos_token": "<|im_start|>"}))
    (folder / "chat_template.jinja").write_text(CHATML_TEMPLATE)
    return folder
