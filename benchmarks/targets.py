"""Serving stacks to compare, each started in a process of its own with the same model and engine arguments:

  vllm     bare vLLM, its own OpenAI server (python -m vllm.entrypoints.openai.api_server)
  rayllm   ray.serve.llm's build_openai_app, as it comes (its default stream batching)
  ours     llmserve (`llmserve up`'s code path), with a small RAG collection ingested

`python -m benchmarks.targets ours --port 8000` prints `READY <url> <key>` and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import uuid

from core.settings import Settings

RAG_DOCS = [
    {
        "source": f"doc-{i}.md",
        "text": f"Section {i}. The river system carries water from the mountain to the city. "
        f"Network requests and tokens flow through the cluster; memory holds each answer. Item {i} of the notes.",
    }
    for i in range(12)
]


def engine_settings(port: int) -> Settings:
    return Settings(
        server={"port": port, "proxy_port": port + 1},
        metrics={"export_port": port + 2, "wandb_mode": "disabled"},
    )


def vllm_command(settings: Settings, model_dir: str, port: int) -> list[str]:
    """Bare vLLM with exactly the engine arguments build_llm_config gives ray.serve.llm."""
    engine = settings.engine
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_dir,
        "--served-model-name",
        engine.model_name,
        "--dtype",
        engine.dtype,
        "--max-model-len",
        str(engine.max_model_len),
        "--seed",
        str(engine.seed),
        "--port",
        str(port),
    ]
    if engine.quantization:
        cmd += ["--quantization", engine.quantization]
    if engine.enforce_eager:
        cmd.append("--enforce-eager")
    if engine.kv_cache_memory_bytes:
        cmd += ["--kv-cache-memory-bytes", str(engine.kv_cache_memory_bytes)]
    if engine.tool_call_parser:
        cmd += ["--enable-auto-tool-choice", "--tool-call-parser", engine.tool_call_parser]
        cmd += ["--tool-strict-level", engine.tool_strict_level]
    if engine.structured_outputs_config:
        cmd += ["--structured-outputs-config", json.dumps(engine.structured_outputs_config)]
    return cmd


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def serve_rayllm(port: int) -> None:
    import ray
    from ray import serve
    from ray.serve.llm import build_openai_app

    from deployments.llm import build_llm_config
    from serve_app.model_prep import resolve_model_source
    from serve_app.runtime import engine_environment

    settings = engine_settings(port)
    engine_environment()
    engine = settings.engine
    config = build_llm_config(engine, resolve_model_source(engine.model, engine.model_cache_dir))
    config.experimental_configs = {}  # ray.serve.llm's own default stream batching
    ray.init(num_cpus=8, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_openai_app({"llm_configs": [config]}), name="rayllm", route_prefix="/")
    print(f"READY http://127.0.0.1:{port} none", flush=True)
    _wait_for_signal()
    serve.shutdown()
    ray.shutdown()


def serve_ours(port: int, redis_url: str) -> None:
    import httpx
    from pydantic import SecretStr

    from serve_app.runtime import start_local

    key = "sk-bench-" + uuid.uuid4().hex
    settings = Settings(
        master_key=SecretStr(key),
        data_dir=settings_dir(),
        server={"port": port, "proxy_port": port + 1},
        metrics={"export_port": port + 2, "wandb_mode": "offline"},
        # No response cache: the same greedy prompts go to every target, and each must generate them.
        state={
            "redis_url": redis_url,
            "redis_prefix": f"llmserve-bench-{uuid.uuid4().hex[:6]}",
            "response_cache": False,
        },
        limits={"max_inflight_per_model": 1000},
    )
    stack = start_local(settings, say=lambda _: None)
    ingest = httpx.post(
        f"{stack.url}/v1/rag/documents",
        json={"collection": "bench", "documents": RAG_DOCS},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )
    ingest.raise_for_status()
    print(f"READY {stack.url} {key}", flush=True)
    _wait_for_signal()
    stack.shutdown()


def settings_dir():
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix="llmserve-bench-"))


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[sys.argv.index("--port") + 1])
    if kind == "rayllm":
        serve_rayllm(port)
    elif kind == "ours":
        serve_ours(port, os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    else:
        raise SystemExit(f"unknown target {kind!r}")
