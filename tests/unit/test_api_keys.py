import asyncio
import time

from core.keys import key_hash
from state.api_keys import KeyStore, Limits
from state.keyspace import tenant_base
from tests.conftest import redis_client


def test_keys_are_stored_only_as_hashes_and_revoke_at_once(redis_prefix):
    async def go():
        async with redis_client() as client:
            store = KeyStore(client, redis_prefix)
            key, record = await store.create("team-a", "acme", Limits(rpm=5, models=["m"]))
            assert key.startswith("sk-llmserve-") and record.key_id == key_hash(key)[:12]
            found = await store.lookup(key_hash(key))
            assert found.name == "team-a" and found.rpm == 5 and found.models == ["m"] and not found.revoked
            assert found.tenant == "acme" and not found.admin
            # No plaintext anywhere in the keyspace.
            async for name in client.scan_iter(f"{redis_prefix}:*"):
                assert key not in name
                kind = await client.type(name)
                values = (
                    (await client.hgetall(name)).values()
                    if kind == "hash"
                    else (await client.smembers(name) if kind == "set" else [await client.get(name)])
                )
                assert all(key not in str(v) for v in values)
            assert [r.name for r in await store.list()] == ["team-a"]
            assert await store.revoke(record.key_id) == [record.key_id]
            assert (await store.lookup(key_hash(key))).revoked

    asyncio.run(go())


def test_revoke_by_name_and_unknown(redis_prefix):
    async def go():
        async with redis_client() as client:
            store = KeyStore(client, redis_prefix)
            await store.create("dup", "acme", Limits())
            await store.create("dup", "acme", Limits())
            assert len(await store.revoke("dup")) == 2
            assert await store.revoke("nobody") == []

    asyncio.run(go())


def test_a_key_of_its_own_tenant_expiry_and_a_tenants_keys(redis_prefix):
    async def go():
        async with redis_client() as client:
            store = KeyStore(client, redis_prefix)
            _, own = await store.create("solo", "", Limits(), own_tenant=True)
            assert own.tenant == own.key_id
            _, soon = await store.create("temp", "acme", Limits(), expires_at=time.time() + 60)
            assert not soon.expired() and soon.expired(now=time.time() + 61)
            _, other = await store.create("b", "beta", Limits(), admin=True)
            assert [r.key_id for r in await store.list("acme")] == [soon.key_id]
            assert await store.delete_tenant_keys("acme") == 1
            assert await store.by_id(soon.key_id) is None and not await client.exists(
                f"{tenant_base(redis_prefix, 'acme')}:keys"
            )
            assert (await store.by_id(other.key_id)).admin  # another tenant's key is untouched

    asyncio.run(go())
