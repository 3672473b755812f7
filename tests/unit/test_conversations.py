import asyncio
import contextlib

from core.models import ChatMessage
from state.conversations import ConversationStore
from tests.conftest import redis_client


def run(coro):
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def _store(prefix, ttl=3600):
    async with redis_client() as client:
        yield client, ConversationStore(client, prefix, ttl)


def test_turns_are_appended_in_order_and_read_back(redis_prefix):
    async def go():
        async with _store(redis_prefix) as (client, store):
            turn1 = [ChatMessage(role="user", content="hi"), ChatMessage(role="assistant", content="hello")]
            turn2 = [ChatMessage(role="user", content="how?"), ChatMessage(role="assistant", content="fine")]
            assert await store.commit_turn("c1", "r1", turn1)
            assert await store.commit_turn("c1", "r2", turn2)
            history = await store.history("c1")
            assert [m.content for m in history] == ["hi", "hello", "how?", "fine"]
            assert [m.content for m in await store.history("c1", max_messages=2)] == ["how?", "fine"]
            assert await store.history("c1", max_messages=0) == []
            assert await client.ttl(f"{redis_prefix}:conv:c1") > 3000

    run(go())


def test_a_request_id_is_committed_once(redis_prefix):
    async def go():
        async with _store(redis_prefix) as (_, store):
            turn = [ChatMessage(role="user", content="q"), ChatMessage(role="assistant", content="a")]
            results = await asyncio.gather(*(store.commit_turn("c2", "same-request", turn) for _ in range(10)))
            assert sum(results) == 1
            assert len(await store.history("c2")) == 2

    run(go())


def test_unknown_conversation_is_empty_and_absent(redis_prefix):
    async def go():
        async with _store(redis_prefix) as (_, store):
            assert await store.history("nope") == []
            assert not await store.exists("nope")

    run(go())


def test_delete_removes_history_and_commit_marks(redis_prefix):
    async def go():
        async with _store(redis_prefix) as (_, store):
            turn = [ChatMessage(role="user", content="q"), ChatMessage(role="assistant", content="a")]
            await store.commit_turn("c3", "r", turn)
            assert await store.delete("c3")
            assert not await store.exists("c3")
            assert await store.commit_turn("c3", "r", turn)  # the id may be reused after deletion

    run(go())
