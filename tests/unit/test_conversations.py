import asyncio
import contextlib
import json

from core.models import ChatMessage
from state.conversations import ConversationStore
from state.keyspace import tenant_base
from tests.conftest import redis_client


def run(coro):
    return asyncio.run(coro)


def turn(question: str, answer: str) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=question), ChatMessage(role="assistant", content=answer)]


@contextlib.asynccontextmanager
async def _store(prefix, ttl=3600, max_messages=200, max_bytes=512 * 1024):
    async with redis_client() as client:
        yield client, ConversationStore(client, prefix, ttl, max_messages, max_bytes)


def test_turns_are_appended_in_order_and_read_back(redis_prefix):
    async def go():
        async with _store(redis_prefix) as (client, store):
            assert await store.commit_turn("t1", "c1", "r1", turn("hi", "hello"))
            assert await store.commit_turn("t1", "c1", "r2", turn("how?", "fine"))
            history = await store.history("t1", "c1")
            assert [m.content for m in history] == ["hi", "hello", "how?", "fine"]
            assert [m.content for m in await store.history("t1", "c1", max_messages=2)] == ["how?", "fine"]
            assert await store.history("t1", "c1", max_messages=0) == []
            assert await client.ttl(f"{tenant_base(redis_prefix, 't1')}:conv:c1") > 3000

    run(go())


def test_two_tenants_with_one_conversation_id_have_two_conversations(redis_prefix):
    async def go():
        async with _store(redis_prefix) as (_, store):
            await store.commit_turn("a", "same-id", "r1", turn("My PIN is 4417.", "Noted."))
            await store.commit_turn("b", "same-id", "r2", turn("hello", "hi"))
            assert [m.content for m in await store.history("b", "same-id")] == ["hello", "hi"]
            assert "4417" in (await store.history("a", "same-id"))[0].content
            assert not await store.exists("c", "same-id")

    run(go())


def test_a_request_id_is_committed_once(redis_prefix):
    async def go():
        async with _store(redis_prefix) as (_, store):
            results = await asyncio.gather(*(store.commit_turn("t1", "c2", "same", turn("q", "a")) for _ in range(10)))
            assert sum(results) == 1
            assert len(await store.history("t1", "c2")) == 2

    run(go())


def test_storage_is_bounded_oldest_first_and_the_newest_turn_stays(redis_prefix):
    async def go():
        async with _store(redis_prefix, max_messages=6, max_bytes=2000) as (client, store):
            for i in range(10):
                await store.commit_turn("t1", "c4", f"r{i}", turn(f"question {i}", f"answer {i}"))
            assert [m.content for m in await store.history("t1", "c4")][:2] == ["question 7", "answer 7"]
            assert len(await store.history("t1", "c4")) == 6  # max_messages
            big = "x" * 990
            await store.commit_turn(
                "t1", "c4", "big", turn(big, big)
            )  # the turn alone is over 2,000 bytes: all older goes
            kept = await client.lrange(f"{tenant_base(redis_prefix, 't1')}:conv:c4", 0, -1)
            assert [json.loads(m)["content"] for m in kept] == [big, big]
            await store.commit_turn("t1", "c4", "huge", turn("y" * 3000, "z"))  # alone over the cap: kept whole
            assert [m.content[:1] for m in await store.history("t1", "c4")] == ["y", "z"]
            # The commit ids kept for idempotency are bounded too.
            for i in range(100):
                await store.commit_turn("t1", "c5", f"run-{i}", turn("q", "a"))
            assert await client.zcard(f"{tenant_base(redis_prefix, 't1')}:convrun:c5") == 64

    run(go())


def test_listing_is_per_tenant_newest_first_and_paginated(redis_prefix):
    async def go():
        async with _store(redis_prefix) as (_, store):
            for i in range(5):
                await store.commit_turn("t1", f"conv-{i}", f"r{i}", turn("q", "a"))
                await asyncio.sleep(0.01)
            await store.commit_turn("t2", "elsewhere", "x", turn("q", "a"))
            page, more = await store.list("t1", limit=3)
            assert [c.id for c in page] == ["conv-4", "conv-3", "conv-2"] and more
            rest, more = await store.list("t1", after="conv-2", limit=3)
            assert [c.id for c in rest] == ["conv-1", "conv-0"] and not more
            assert all(c.messages == 2 for c in page + rest)

    run(go())


def test_delete_removes_history_and_commit_marks(redis_prefix):
    async def go():
        async with _store(redis_prefix) as (_, store):
            await store.commit_turn("t1", "c3", "r", turn("q", "a"))
            assert await store.delete("t1", "c3")
            assert not await store.exists("t1", "c3")
            assert [c.id for c in (await store.list("t1"))[0]] == []
            assert await store.commit_turn("t1", "c3", "r", turn("q", "a"))  # the id may be reused after deletion

    run(go())
