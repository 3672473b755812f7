"""Batch workers: a Serve deployment whose replicas drain the batch queue through the orchestrator (same
providers, retries and accounting as interactive requests), only while the interactive path has headroom.

Each replica runs one loop: yield while interactive requests are in flight (`batch.yield_at`) -- and with
`batch.preempt`, cancel the batch requests generating at that moment and put them back in the queue --, else
claim up to `batch.max_inflight` queued requests (reclaiming those a dead worker held past the visibility timeout),
run them, and commit each result exactly once. Passing failures (overload, a replica gone) go back to the
queue; a request delivered `batch.max_attempts` times goes to the error file. Replicas autoscale on the
queue's depth and the age of its oldest request (`queue_autoscaling_policy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid

from ray import serve
from ray.serve.config import AutoscalingContext
from ray.serve.handle import DeploymentHandle

from core.errors import QuotaExceeded, error_body
from core.models import Caller, ChatRequest, ChatResponse
from core.pricing import Price
from core.setting_groups import BatchSettings, LimitsSettings, MetricsSettings, StateSettings
from deployments.batch_accounts import BatchAccounts
from deployments.batch_jobs import error_record, finalize, queue_lines, response_record
from deployments.handles import configured
from observability import prom
from observability.wandb_runs import sink_for
from state.batches import TERMINAL, BatchStore, QueuedRequest
from state.files import FileStore
from state.interactive_load import InteractiveLoad
from state.limits import Scope
from state.redis_client import async_redis

logger = logging.getLogger("ray.serve")
_FINAL_STATUSES = {400, 401, 403, 404, 413, 422}  # the request itself is wrong: retrying cannot help
_JANITOR_EVERY_S = 15.0
_UNHEALTHY_AFTER = 30  # failed rounds in a row (~30 s) before Serve is told to replace the replica
_STALE_FINALIZE_S = 30.0


def queue_autoscaling_policy(ctx: AutoscalingContext) -> tuple[int, dict]:
    """Replicas for the queue: one per `batch.queue_per_replica` requests waiting, one more while the oldest
    has waited past `batch.max_age_s`. Every replica reports the same queue-wide numbers; take the max."""
    metrics = ctx.aggregated_metrics or {}
    depth = max((metrics.get("queue_depth") or {}).values(), default=0.0)
    age = max((metrics.get("queue_oldest_age_s") or {}).values(), default=0.0)
    per_replica = max((metrics.get("queue_per_replica") or {}).values(), default=200.0)
    max_age = max((metrics.get("queue_max_age_s") or {}).values(), default=600.0)
    wanted = math.ceil(depth / per_replica) if depth else 0
    if age > max_age and depth:
        wanted = max(wanted, ctx.current_num_replicas + 1)
    return max(wanted, 1), {}


@serve.deployment(name="BatchWorker")
class BatchWorker:
    """`price`: the self-hosted price, for a response that came without a cost."""

    def __init__(
        self,
        orchestrator: DeploymentHandle,
        *,
        batch: BatchSettings,
        state: StateSettings,
        limits: LimitsSettings,
        metrics: MetricsSettings,
        price: Price,
        model_name: str,
        grpc: bool = True,
    ):
        self._batch = batch
        self._price = price
        client = async_redis(state.redis_url)
        self.store = BatchStore(client, state.redis_prefix)
        self._files = FileStore(client, state.redis_prefix)
        self._accounts = BatchAccounts(client, state.redis_prefix, limits, price)
        self._load = InteractiveLoad(client, state.redis_prefix)
        self._orchestrator = configured(orchestrator, grpc)
        self._consumer = f"worker-{uuid.uuid4().hex[:12]}"
        self._inflight: set[asyncio.Task] = set()
        self._generating: set[asyncio.Task] = set()  # waiting on the orchestrator now
        self._held: dict[str, QueuedRequest] = {}  # stream entry id -> request, while this replica works on it
        self._preempted: set[asyncio.Task] = set()
        self.preemptions = 0
        self._stats = (0, 0.0)
        self._failing_rounds = 0
        self._sink = sink_for(metrics, "batch-worker", config={"model": model_name})
        self._loop = asyncio.get_event_loop().create_task(self._run())

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Custom metrics for `queue_autoscaling_policy` (and the knobs it needs, so it reads no settings)."""
        depth, age = self._stats
        return {
            "queue_depth": float(depth),
            "queue_oldest_age_s": age,
            "queue_per_replica": float(self._batch.queue_per_replica),
            "queue_max_age_s": self._batch.max_age_s,
        }

    async def check_health(self) -> None:
        if self._loop.done():
            raise RuntimeError(f"the batch loop stopped: {self._loop.exception()!r}")
        if self._failing_rounds >= _UNHEALTHY_AFTER:
            raise RuntimeError(f"the batch loop failed {self._failing_rounds} rounds in a row (see the replica log)")

    async def status(self) -> dict:
        """What this replica is doing (for tests and `llmserve batches`)."""
        depth, age = self._stats
        return {
            "consumer": self._consumer,
            "inflight": len(self._inflight),
            "preemptions": self.preemptions,
            "queue_depth": depth,
            "oldest_s": age,
        }

    # --- the loop -------------------------------------------------------------------------------------
    async def _run(self) -> None:
        janitor_at = extend_at = 0.0
        while True:
            try:
                await self._refresh_stats()
                if time.monotonic() >= janitor_at:
                    janitor_at = time.monotonic() + _JANITOR_EVERY_S
                    await self._janitor()
                if self._held and time.monotonic() >= extend_at:
                    extend_at = time.monotonic() + self._batch.visibility_timeout_s / 3
                    await self.store.extend(self._consumer, list(self._held))
                if await self._load.total() >= self._batch.yield_at:  # interactive traffic: yield
                    self._failing_rounds = 0
                    if self._batch.preempt:
                        self._preempt()
                    await asyncio.sleep(0.1)
                    continue
                room = self._batch.max_inflight - len(self._inflight)
                if room <= 0:
                    self._failing_rounds = 0
                    await asyncio.sleep(0.1)
                    continue
                claimed = await self.store.claim(
                    self._consumer,
                    room,
                    block_ms=200 if self._inflight else 1000,  # keep watching the interactive load while busy
                    visibility_s=self._batch.visibility_timeout_s,
                )
                for request in claimed:
                    task = asyncio.ensure_future(self._process(request))
                    self._inflight.add(task)
                    task.add_done_callback(self._inflight.discard)
                self._failing_rounds = 0
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis away, a bug in one round: log, wait, go on (unhealthy if it persists)
                self._failing_rounds += 1
                logger.exception("batch worker loop")
                await asyncio.sleep(1.0)

    def _preempt(self) -> None:
        """Cancel the batch requests generating now; each goes back to the queue (`_process_once`)."""
        for task in list(self._generating):
            if task not in self._preempted:
                self._preempted.add(task)
                task.cancel()

    async def _refresh_stats(self) -> None:
        self._stats = await self.store.stats()
        prom.set_gauge("llmserve_batch_queue_depth", self._stats[0])
        prom.set_gauge("llmserve_batch_queue_oldest_age_seconds", self._stats[1])

    async def _janitor(self) -> None:
        """Resume intakes that were cut off (their ingress died), finish batches whose finaliser died, and
        cancelled batches with every line accounted for."""
        now = time.time()
        for fields in await self.store.unfinished():
            batch_id, status = fields["id"], fields["status"]
            cut_off = status in ("in_progress", "cancelling") and not fields.get("intake_done")
            if cut_off and float(fields.get("intake_until") or fields.get("in_progress_at") or now) + 60 < now:
                await self.store.update(fields["tenant"], batch_id, {"intake_until": repr(now + 60)})
                await queue_lines(self.store, self._files, fields["tenant"], batch_id)
                continue
            done = sum(int(fields.get(k, 0)) for k in ("completed", "failed", "skipped"))
            stale = now - float(fields.get("finalizing_at") or now) > _STALE_FINALIZE_S
            if (status == "finalizing" and stale) or (status == "cancelling" and done >= int(fields["total"])):
                await finalize(self.store, self._files, fields["tenant"], batch_id)

    # --- one request ----------------------------------------------------------------------------------
    async def _process(self, request: QueuedRequest) -> None:
        self._held[request.entry_id] = request
        try:
            await self._process_once(request)
        except Exception:  # left unacked: the visibility timeout redelivers it
            logger.exception("batch request %s/%s", request.batch_id, request.line)
        finally:
            self._held.pop(request.entry_id, None)
            self._preempted.discard(asyncio.current_task())  # preempted after its answer came: nothing to undo

    async def _process_once(self, request: QueuedRequest) -> None:
        fields = await self.store.fields(request.tenant, request.batch_id)
        over = not fields or fields["status"] in ("cancelling", *TERMINAL)
        if over or time.time() > float(fields.get("expires_at") or "inf") or await self.store.is_done(request):
            # Cancelled, expired, finished, gone, or this line already answered: ack it without running it.
            await self._commit(request, "skip", None)
            return
        scope = await self._accounts.scope(request)
        attempts = await self.store.attempt(request)
        if attempts > self._batch.max_attempts:
            message = f"gave up after {attempts - 1} attempts (the request kept failing or its worker kept dying)"
            await self._commit(request, "err", error_record(request.custom_id, "max_attempts", message, request.line))
            return
        request_id = f"{request.batch_id}-{request.line}"
        chat = ChatRequest.model_validate({**request.body, "request_id": request_id})
        refused = await self._accounts.reserve(scope, request_id, chat)
        if refused is not None:  # not a model of its key, or over a budget: no provider is called
            record = response_record(request.custom_id, request_id, refused.status, refused.to_error_body())
            await self._commit(request, "err", record)
            return
        try:
            await self._generate(request, scope, chat, attempts)
        finally:
            await asyncio.shield(self._accounts.release(scope, request_id))

    async def _generate(self, request: QueuedRequest, scope: Scope, chat: ChatRequest, attempts: int) -> None:
        request_id = chat.request_id or ""
        started = time.perf_counter()
        task = asyncio.current_task()
        self._generating.add(task)
        try:
            caller = Caller(tenant=request.tenant, key_id=request.owner, journal=False)
            response: ChatResponse = await self._orchestrator.chat.remote(chat, caller)
        except asyncio.CancelledError:
            if task not in self._preempted:
                raise  # the replica is stopping: the visibility timeout redelivers the request
            # Preempted for interactive traffic (Serve cancels the engine request too): not a failed attempt.
            self._preempted.discard(task)
            self.preemptions += 1
            prom.inc("llmserve_batch_requests_total", result="preempted")
            await asyncio.shield(self.store.requeue(request, uncount=True))
            return
        except Exception as exc:
            status, body = error_body(exc, request_id)
            prom.inc("llmserve_errors_total", type=body["error"]["type"], status=str(status))
            final = status in _FINAL_STATUSES or isinstance(exc, QuotaExceeded)
            if not final and attempts < self._batch.max_attempts:
                await asyncio.sleep(min(2.0**attempts, 30.0))  # back off, then to the back of the queue
                await self.store.requeue(request)
                return
            record = response_record(request.custom_id, request_id, status, body)
            await self._commit(request, "err", record)
            return
        finally:
            self._generating.discard(task)
        elapsed = time.perf_counter() - started
        prom.observe("llmserve_batch_request_seconds", elapsed)
        body = response.model_dump(mode="json", exclude_none=True)
        usage = response.usage
        cost = response.cost_usd
        if cost is None:
            cost = self._price.cost(usage.prompt_tokens, usage.completion_tokens)
        record = response_record(request.custom_id, request_id, 200, body)
        if await self._commit(request, "ok", record, (usage.prompt_tokens, usage.completion_tokens, cost), scope):
            depth, age = self._stats
            self._sink.record(
                {
                    "batch_e2e_latency_s": elapsed,
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "cost_usd": cost,
                    "batch_queue_depth": depth,
                    "batch_queue_oldest_age_s": age,
                }
            )

    async def _commit(
        self,
        request: QueuedRequest,
        kind: str,
        record: dict | None,
        usage: tuple[int, int, float] = (0, 0, 0.0),
        scope: Scope | None = None,
    ) -> bool:
        """Commit once (an answer charges `usage` to `scope`'s key and tenant); True when this was the line's
        first result."""
        charge = self._accounts.limiter.charge_keys(scope) if scope is not None else []
        first, finish = await self.store.commit(request, kind, record, charge, usage)
        if first:
            prom.inc("llmserve_batch_requests_total", result=kind)
        if finish:
            await finalize(self.store, self._files, request.tenant, request.batch_id)
        return first

    def __del__(self):
        with contextlib.suppress(Exception):
            self._loop.cancel()
            self._sink.close(timeout_s=5)
