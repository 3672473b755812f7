import asyncio

from core.keys import key_hash
from state.api_keys import KeyLimits, KeyStore
from tests.conftest import redis_client


def test_keys_are_stored_only_as_hashes_and_revoke_at_once(redis_prefix):
    async def go():
        async with redis_client() as client:
            store = KeyStore(client, redis_prefix)
            key, record = await store.create("team-a", KeyLimits(rpm=5, models=["m"]))
            assert key.startswith("sk-llmserve-") and record.key_id == key_hash(key)[:12]
            found = await store.lookup(key_hash(key))
            assert found.name == "team-a" and found.rpm == 5 and found.models == ["m"] and not found.revoked
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
            await store.create("dup", KeyLimits())
            await store.create("dup", KeyLimits())
            assert len(await store.revoke("dup")) == 2
            assert await store.revoke("nobody") == []

    asyncio.run(go())
