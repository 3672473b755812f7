"""The ingress's HTTP app with a real gateway (Redis) and stand-ins for the deployment handles: authentication
decides on the path the app routes, whatever the Serve route prefix (under `/api` the ASGI path is
`/api/admin/keys`, root_path `/api`), and /healthz tells an anonymous caller only ok or not per component."""

import asyncio

import httpx
import pytest

from core.errors import AuthenticationFailed
from core.keys import key_hash
from core.pricing import Price
from core.setting_groups import BatchSettings, LimitsSettings, PricingSettings, RoutingSettings
from deployments.gateway import Gateway
from deployments.http_app import build_http_app
from deployments.ingress_state import IngressState
from state.api_keys import Limits
from state.batches import BatchStore
from state.conversations import ConversationStore
from state.files import FileStore
from state.journal import Journal
from state.rag_grants import SharedGrants
from state.responses import ResponseStore
from tests.conftest import redis_client

MASTER = "sk-master-for-this-test"


class NoHandle:
    """Stands in for the deployment handles: these requests never reach a deployment."""

    def options(self, **_):
        return self


class FailingOrchestrator(NoHandle):
    """An orchestrator whose health check found Redis down, with the details an operator needs."""

    def __init__(self):
        self.health = self

    async def remote(self):
        return {"redis": "error: ConnectionError: Error 111 connecting to redis-internal.corp:6379", "engine": "ok"}


async def app_under_prefix(client, prefix: str, orchestrator=None):
    gateway = Gateway(
        client,
        master_key_hash=key_hash(MASTER),
        redis_prefix=prefix,
        limits=LimitsSettings(),
        price=Price(),
        capacity=10,
    )
    state = IngressState(
        gateway=gateway,
        orchestrator=orchestrator or NoHandle(),
        retriever=NoHandle(),
        batch_worker=None,
        redis=client,
        redis_prefix=prefix,
        conversations=ConversationStore(client, prefix, 3600),
        files=FileStore(client, prefix),
        batches=BatchStore(client, prefix),
        grants=SharedGrants(client, prefix),
        journal=Journal(client, prefix, ttl_s=600),
        responses=ResponseStore(client, prefix, 600),
        batch=BatchSettings(),
        routing=RoutingSettings(),
        pricing=PricingSettings(),
        gpus_per_replica=1,
        accelerator="cpu",
        served_models=["m"],
    )
    return gateway, build_http_app(state, max_body_bytes=4096)


def test_admin_routes_want_an_admin_key_under_any_route_prefix(redis_prefix):
    async def go():
        async with redis_client() as client:
            gateway, app = await app_under_prefix(client, redis_prefix)
            tenant_key, _ = await gateway.keys.create("b", "beta", Limits())
            await gateway.tenants.ensure("beta")  # as POST /admin/keys does
            for root in ("/api", "/deep/er", ""):
                transport = httpx.ASGITransport(app=app, root_path=root)
                async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                    as_tenant = {"Authorization": f"Bearer {tenant_key}"}
                    refused = await http.get(f"{root}/admin/keys", headers=as_tenant)
                    assert refused.status_code == 403, (root, refused.text)
                    assert refused.json()["error"]["code"] == "permission_denied"
                    assert (await http.get(f"{root}/admin/keys")).status_code == 401
                    assert (await http.get(f"{root}/v1/models")).status_code == 401
                    assert (await http.get(f"{root}/v1/models", headers=as_tenant)).status_code == 200
                    admin = {"Authorization": f"Bearer {MASTER}"}
                    assert (await http.get(f"{root}/admin/keys", headers=admin)).status_code == 200
                    # Only admin keys act for another tenant.
                    other = {**as_tenant, "X-LLMServe-Tenant": "alpha"}
                    assert (await http.get(f"{root}/v1/files", headers=other)).status_code == 403
                    # ... and only for a tenant that exists (what it wrote could never be deleted otherwise).
                    ghost = {**admin, "X-LLMServe-Tenant": "never-made"}
                    missing = await http.get(f"{root}/v1/files", headers=ghost)
                    assert missing.status_code == 404 and missing.json()["error"]["param"] == "X-LLMServe-Tenant"
                    assert (
                        await http.get(f"{root}/v1/files", headers={**admin, "X-LLMServe-Tenant": "beta"})
                    ).is_success

    asyncio.run(go())


def test_healthz_says_only_ok_or_not_without_an_admin_key(redis_prefix):
    async def go():
        async with redis_client() as client:
            gateway, app = await app_under_prefix(client, redis_prefix, FailingOrchestrator())
            tenant_key, _ = await gateway.keys.create("b", "beta", Limits())
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                anonymous = await http.get("/healthz")
                assert anonymous.status_code == 503
                assert anonymous.json() == {"status": "unhealthy", "checks": {"redis": "error", "engine": "ok"}}
                tenant = await http.get("/healthz", headers={"Authorization": f"Bearer {tenant_key}"})
                assert "redis-internal" not in tenant.text
                admin = await http.get("/healthz", headers={"Authorization": f"Bearer {MASTER}"})
                assert "redis-internal.corp:6379" in admin.json()["checks"]["redis"]

    asyncio.run(go())


def test_a_known_key_authenticates_in_one_round_trip_and_still_sees_every_change_at_once(redis_prefix):
    """A replica remembers only a key's tenant (which never changes) and reads the key and its tenant together:
    one round trip from the second request on, and a revoked key, a deleted one or new tenant limits take effect
    on the very next request."""

    async def go():
        async with redis_client() as client:
            gateway, _ = await app_under_prefix(client, redis_prefix)
            await gateway.tenants.ensure("acme")
            key, record = await gateway.keys.create("a", "acme", Limits(rpm=7))
            pool, trips = client.connection_pool, []
            acquire = pool.get_connection

            async def counted(*args, **kwargs):
                trips.append(1)
                return await acquire(*args, **kwargs)

            pool.get_connection = counted
            first = await gateway.authenticate(f"Bearer {key}")
            assert (first.tenant, first.limits.rpm, len(trips)) == ("acme", 7, 2)
            trips.clear()
            assert (await gateway.authenticate(f"Bearer {key}")).tenant == "acme" and len(trips) == 1
            await gateway.tenants.set_limits("acme", Limits(rpm=3))
            assert (await gateway.authenticate(f"Bearer {key}")).tenant_limits.rpm == 3
            await gateway.keys.revoke(record.key_id)
            with pytest.raises(AuthenticationFailed):
                await gateway.authenticate(f"Bearer {key}")
            other, _ = await gateway.keys.create("b", "beta", Limits())
            await gateway.authenticate(f"Bearer {other}")
            await gateway.keys.delete_tenant_keys("beta")
            with pytest.raises(AuthenticationFailed):
                await gateway.authenticate(f"Bearer {other}")
            with pytest.raises(AuthenticationFailed):  # an unknown key: nothing remembered for it
                await gateway.authenticate("Bearer sk-llmserve-no-such-key")

    asyncio.run(go())
