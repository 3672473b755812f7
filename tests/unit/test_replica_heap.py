"""Serve freezes what a replica's constructor made out of the GC's scans (RAY_SERVE_FREEZE_GC_ON_STARTUP). What
the first request imports is not frozen: every full collection then walks it, with the event loop stopped. vLLM's
request classes pull in torch, sympy and scipy (~600k objects: 200-350 ms per full collection, one every 2-3 s at
64 streams), so the self-hosted provider imports them as it is made."""

import subprocess
import sys
from pathlib import Path

FIRST_REQUEST_AFTER_FREEZE = """
import asyncio, gc
from deployments.providers.base import GenerationParams
from deployments.providers.self_hosted import ServeLLMEngine

class Handle:  # a deployment handle whose engine answers "hi"
    def options(self, **_):
        return self
    chat = completions = property(lambda self: self)
    def remote(self, request):
        async def stream():
            yield ['data: {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}\\n\\n']
        return stream()

engine = ServeLLMEngine(Handle(), "m")  # the orchestrator replica's constructor
gc.collect()
gc.freeze()  # what Serve does as the constructor returns
async def first():
    stream = engine.stream("m", [{"role": "user", "content": "x"}], GenerationParams(max_tokens=8), "r")
    return [d async for deltas in stream for d in deltas]
assert asyncio.run(first())[0].text == "hi"
gc.collect()
print(f"WALKED {len(gc.get_objects())}")
"""


def test_the_first_request_leaves_the_gc_little_to_walk():
    repo = Path(__file__).parents[2]  # (this checkout's code, not an installed copy)
    out = subprocess.run(
        [sys.executable, "-c", FIRST_REQUEST_AFTER_FREEZE], capture_output=True, text=True, timeout=300, cwd=repo
    )
    assert out.returncode == 0, out.stderr[-3000:]
    walked = int(next(line for line in out.stdout.splitlines() if line.startswith("WALKED ")).split()[1])
    assert walked < 20_000, f"{walked} objects outside the frozen heap after the first request"
