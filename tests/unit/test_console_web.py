"""The web console on the ingress's real HTTP app, with a real gateway and stores (Redis) and a stand-in
Retriever: signing in and out, what admin and tenant keys may see and do, and the live samples' scoping. The
browser-driven test on the whole stack is tests/integration/test_console.py."""

import asyncio
import re

import httpx

from core.models import CollectionInfo, DocumentInfo
from deployments.console_samples import record_request_sample
from state.api_keys import Limits
from tests.conftest import redis_client
from tests.unit.test_http_gateway import MASTER, NoHandle, app_under_prefix

PAGES = ("", "/keys", "/usage", "/batches", "/conversations", "/rag")


class FakeRetriever(NoHandle):
    """Answers the two calls the console makes, for any tenant."""

    def __init__(self):
        self.collections = self._Call(lambda tenant, shared: [CollectionInfo(id=f"docs-of-{tenant}", chunks=3)])
        self.documents = self._Call(lambda tenant, c: [DocumentInfo(source="a.md", chunks=3, content_sha256="ab" * 32)])

    class _Call:
        def __init__(self, answer):
            self._answer = answer

        async def remote(self, *args):
            return self._answer(*args)


async def console(client, prefix, root=""):
    gateway, app = await app_under_prefix(client, prefix)
    app.state.ingress.retriever = FakeRetriever()
    transport = httpx.ASGITransport(app=app, root_path=root)
    # a browser posting the console's own forms sends their origin (console_web.same_origin)
    client = httpx.AsyncClient(transport=transport, base_url="http://test", headers={"origin": "http://test"})
    return gateway, app, client


async def sign_in(http, key, root=""):
    return await http.post(f"{root}/console/login", data={"key": key})


def test_pages_send_strangers_to_the_login_page_and_wrong_keys_get_401(redis_prefix):
    async def go():
        async with redis_client() as client:
            for root in ("", "/api"):
                _, _, http = await console(client, redis_prefix, root)
                async with http:
                    for page in (*PAGES, "/providers", "/batches/batch_x"):
                        away = await http.get(f"{root}/console{page}")
                        assert away.status_code == 303 and away.headers["location"] == f"{root}/console/login"
                    api = await http.get(f"{root}/console/api/samples")
                    assert api.status_code == 401 and "error" in api.json()
                    wrong = await sign_in(http, "sk-not-a-key", root)
                    assert wrong.status_code == 401 and "incorrect API key" in wrong.text
                    assert "set-cookie" not in wrong.headers
                    assert (await http.get(f"{root}/console/login")).status_code == 200

    asyncio.run(go())


def test_signing_in_sets_a_strict_httponly_cookie_for_the_console_only(redis_prefix):
    async def go():
        async with redis_client() as client:
            for root in ("", "/api"):
                _, _, http = await console(client, redis_prefix, root)
                async with http:
                    signed = await sign_in(http, MASTER, root)
                    assert signed.status_code == 303 and signed.headers["location"] == f"{root}/console"
                    cookie = signed.headers["set-cookie"]
                    for attribute in ("HttpOnly", "SameSite=strict", f"Path={root}/console"):
                        assert attribute.lower() in cookie.lower(), cookie
                    assert "secure" not in cookie.lower()  # plain http here
                    for page in (*PAGES, "/providers"):
                        shown = await http.get(f"{root}/console{page}")
                        assert shown.status_code == 200, (page, shown.text)
                        assert shown.headers["x-frame-options"] == "DENY"
                        assert shown.headers["cache-control"] == "no-store"
                        assert "frame-ancestors 'none'" in shown.headers["content-security-policy"]
                    out = await http.post(f"{root}/console/logout")
                    assert out.status_code == 303 and 'llmserve_console=""' in out.headers["set-cookie"]
                    assert (await http.get(f"{root}/console")).status_code == 303

    asyncio.run(go())


def test_an_admin_creates_and_revokes_keys_and_sets_tenant_limits(redis_prefix):
    async def go():
        async with redis_client() as client:
            gateway, _, http = await console(client, redis_prefix)
            async with http:
                await sign_in(http, MASTER)
                form = {"name": "ci", "tenant": "acme", "rpm": "60", "budget_usd": "5", "budget_window": "daily",
                        "models": "m, other"}  # fmt: skip
                created = await http.post("/console/keys", data=form)
                assert created.status_code == 200, created.text
                key = re.search(r'id="new-key">([^<]+)<', created.text).group(1)
                principal = await gateway.authenticate(f"Bearer {key}")
                assert principal.tenant == "acme" and principal.limits.rpm == 60
                assert principal.limits.models == ["m", "other"] and principal.limits.budget_window == "daily"
                row = re.search(rf'data-key-id="{principal.kid}"[^>]*data-status="(\w+)"', created.text)
                assert row.group(1) == "active"

                bad = await http.post("/console/keys", data={"name": "x", "tenant": "acme", "rpm": "0"})
                assert bad.status_code == 400 and "rpm" in bad.text

                limits = {"name": "Acme Inc", "tpm": "1000", "budget_window": "total"}
                saved = await http.post("/console/tenants/acme/limits", data=limits)
                assert saved.status_code == 303
                assert (await gateway.tenants.get("acme")).limits.tpm == 1000
                assert "Acme Inc" in (await http.get(saved.headers["location"])).text

                revoked = await http.post(f"/console/keys/{principal.kid}/revoke")
                assert revoked.status_code == 303
                page = await http.get(revoked.headers["location"])
                assert re.search(rf'data-key-id="{principal.kid}"[^>]*data-status="revoked"', page.text)
                missing = await http.post("/console/keys/nosuchkey/revoke")
                assert missing.status_code == 404

    asyncio.run(go())


def test_a_tenant_key_sees_its_own_tenant_read_only(redis_prefix):
    async def go():
        async with redis_client() as client:
            gateway, _, http = await console(client, redis_prefix)
            own, _ = await gateway.keys.create("mine", "beta", Limits())
            await gateway.tenants.ensure("beta")
            await gateway.keys.create("theirs", "gamma", Limits())
            await gateway.tenants.ensure("gamma")
            await record_request_sample(client, redis_prefix, {"tenant": "beta", "ttft_s": 0.1, "completion_tokens": 4})
            await record_request_sample(
                client, redis_prefix, {"tenant": "gamma", "ttft_s": 0.2, "completion_tokens": 9}
            )
            async with http:
                await sign_in(http, own)
                keys = await http.get("/console/keys")
                assert keys.status_code == 200
                assert 'data-name="mine"' in keys.text and 'data-name="theirs"' not in keys.text
                assert "create-key" not in keys.text and "Revoke" not in keys.text and "limits-form" not in keys.text
                assert "nav-providers" not in keys.text
                for page in PAGES:
                    shown = await http.get(f"/console{page}")
                    assert shown.status_code == 200 and "gamma" not in shown.text, page
                rag = await http.get("/console/rag")
                assert "docs-of-beta" in rag.text
                assert (await http.get("/console/rag/docs-of-beta")).status_code == 200
                for refused in (
                    await http.post("/console/keys", data={"name": "x", "tenant": "beta"}),
                    await http.post("/console/keys/anything/revoke"),
                    await http.post("/console/tenants/beta/limits", data={"rpm": "1"}),
                    await http.get("/console/providers"),
                    await http.get("/console/batches?tenant=gamma"),
                    await http.get("/console/keys?tenant=gamma"),
                ):
                    assert refused.status_code == 403, refused.text
                live = (await http.get("/console/api/samples")).json()
                assert live["tenant"] == "beta" and live["summary"]["requests"] == 1
                assert live["summary"]["output_tokens"] == 4 and 'data-points="1"' in live["charts"]["ttft"]
                assert (await http.get("/console/api/samples?tenant=gamma")).status_code == 403

                await gateway.keys.revoke("mine")  # a revoked key loses the console at once
                assert (await http.get("/console/keys")).status_code == 303

            _, _, admin = await console(client, redis_prefix)
            async with admin:
                await sign_in(admin, MASTER)
                everyone = (await admin.get("/console/api/samples")).json()
                assert everyone["tenant"] is None and everyone["summary"]["requests"] == 2
                assert (await admin.get("/console/api/samples?tenant=gamma")).json()["summary"]["output_tokens"] == 9
                assert 'id="chart-ttft"' in everyone["html"]  # the panel console.js swaps in

    asyncio.run(go())


def test_console_routes_stay_out_of_the_openapi_schema(redis_prefix):
    async def go():
        async with redis_client() as client:
            _, _, http = await console(client, redis_prefix)
            async with http:
                schema = (await http.get("/openapi.json")).json()
                assert not [p for p in schema["paths"] if p.startswith("/console")]
                static = await http.get("/console/static/console.js")
                assert static.status_code == 200 and "refreshLive" in static.text
                assert (await http.get("/console/static/..%2Fconsole_web.py")).status_code == 404

    asyncio.run(go())


def test_a_form_posted_from_another_origin_is_refused(redis_prefix):
    async def go():
        async with redis_client() as client:
            _, _, http = await console(client, redis_prefix)
            async with http:
                for origin in ("http://evil.example", "http://sub.test"):
                    refused = await http.post("/console/login", data={"key": MASTER}, headers={"origin": origin})
                    assert refused.status_code == 403 and "own pages" in refused.text
                    assert "set-cookie" not in refused.headers  # nobody was signed in
                del http.headers["origin"]
                assert (await sign_in(http, MASTER)).status_code == 403  # neither Origin nor Referer
                referred = await http.post("/console/login", data={"key": MASTER}, headers={"referer": "http://test/x"})
                assert referred.status_code == 303

    asyncio.run(go())
