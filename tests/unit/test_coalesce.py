"""Coalescing stream items between hops: nothing delayed when idle, bursts merged, errors and cancellation kept."""

import asyncio

import pytest

from deployments.coalesce import coalesce


def test_a_burst_crosses_as_one_item_and_an_idle_stream_is_not_delayed():
    async def burst():
        for i in range(10):
            yield [i]

    async def slow():
        for i in range(3):
            await asyncio.sleep(0.05)
            yield [i]

    async def main():
        merged = [item async for item in coalesce(burst())]
        paced = []
        started = asyncio.get_running_loop().time()
        async for item in coalesce(slow()):
            paced.append((item, round(asyncio.get_running_loop().time() - started, 2)))
        return merged, paced

    merged, paced = asyncio.run(main())
    assert [x for item in merged for x in item] == list(range(10)) and len(merged) < 10
    assert [item for item, _ in paced] == [[0], [1], [2]]
    assert [t for _, t in paced] == pytest.approx([0.05, 0.10, 0.15], abs=0.03)  # each as soon as it exists


def test_an_error_arrives_after_what_came_before_it():
    async def failing():
        yield [1]
        yield [2]
        raise ValueError("engine died")

    async def main():
        got = []
        with pytest.raises(ValueError, match="engine died"):
            async for item in coalesce(failing()):
                got.extend(item)
        return got

    assert asyncio.run(main()) == [1, 2]


def test_closing_the_consumer_stops_the_source():
    async def main():
        state = {"closed": False}

        async def endless():
            try:
                while True:
                    await asyncio.sleep(0.01)
                    yield [0]
            finally:
                state["closed"] = True

        stream = coalesce(endless())
        await anext(stream)
        await stream.aclose()
        return state["closed"]

    assert asyncio.run(main()) is True
