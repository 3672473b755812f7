"""Production Redis as deploy/redis.conf configures it: password, AOF with fsync every second, nothing lost
across a restart or a crash; and Redis Sentinel URLs."""

import asyncio
import time

import pytest
import redis

from state.embedded_redis import EmbeddedRedis
from state.redis_client import async_redis, parse_sentinel_url
from tests.services import RedisServer, SentinelServer


@pytest.fixture
def server(tmp_path):
    srv = RedisServer(tmp_path / "redis").start()
    yield srv
    srv.stop()


def test_the_config_turns_on_aof_every_second_and_refuses_eviction(server):
    config = server.client().config_get("*")
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
    assert config["maxmemory-policy"] == "noeviction"


def test_a_password_is_required_and_the_url_carries_it(server):
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=server.port).ping()

    async def roundtrip():
        client = async_redis(server.url)
        await client.set("k", "v")
        value = await client.get("k")
        await client.aclose()
        return value

    assert asyncio.run(roundtrip()) == "v"


@pytest.mark.parametrize("kill", [False, True], ids=["clean-restart", "crash"])
def test_writes_survive_a_restart_and_a_crash(server, kill):
    client = server.client()
    client.xadd("queue", {"n": "1"})
    for i in range(100):
        client.hincrby("usage", "tokens", i)
    time.sleep(1.5)  # appendfsync everysec: a crash loses at most the last second
    server.stop(kill=kill)
    server.start()
    client = server.client()
    assert client.hget("usage", "tokens") == str(sum(range(100)))
    assert client.xlen("queue") == 1


def test_a_sentinel_url_finds_the_master(server, tmp_path):
    sentinel = SentinelServer(server, tmp_path / "sentinel").start()
    try:

        async def roundtrip():
            client = async_redis(sentinel.url)
            await client.set("via-sentinel", "yes")
            value = await client.get("via-sentinel")
            await client.aclose()
            return value

        assert asyncio.run(roundtrip()) == "yes"
        assert server.client().get("via-sentinel") == "yes"
    finally:
        sentinel.stop()


def test_sentinel_urls_are_parsed_with_every_part():
    parsed = parse_sentinel_url("rediss+sentinel://app:p%40ss@s1:26379,s2:26380/mymaster/2?sentinel_password=x")
    assert parsed.sentinels == [("s1", 26379), ("s2", 26380)]
    assert (parsed.service_name, parsed.db, parsed.username, parsed.password) == ("mymaster", 2, "app", "p@ss")
    assert parsed.sentinel_password == "x" and parsed.tls
    with pytest.raises(ValueError, match="service name"):
        parse_sentinel_url("redis+sentinel://s1:26379")


def test_the_embedded_redis_stops_cleanly_and_keeps_its_data(tmp_path):
    embedded = EmbeddedRedis(tmp_path)
    redis.Redis(unix_socket_path=embedded.url.removeprefix("unix://")).set("kept", "1")
    embedded.close()  # what `llmserve up` does on Ctrl-C
    again = EmbeddedRedis(tmp_path)
    try:
        assert redis.Redis(unix_socket_path=again.url.removeprefix("unix://")).get("kept") == b"1"
    finally:
        again.close()


def test_the_embedded_redis_comes_back_from_a_kill_9_with_what_was_acknowledged(tmp_path):
    """AOF (everysec) and a supervisor: killed with SIGKILL, it is restarted on the same socket and has every
    write acknowledged more than a second before the crash."""
    import os
    import signal
    import time

    embedded = EmbeddedRedis(tmp_path)
    try:
        client = embedded.client()
        client.set("revoked", "yes")
        client.rpush("turns", "a", "b")
        time.sleep(1.5)  # appendfsync everysec
        os.kill(embedded.pid, signal.SIGKILL)
        for _ in range(100):  # the supervisor notices within 0.5 s and restarts it from its AOF
            try:
                if embedded.restarts and client.ping():
                    break
            except redis.exceptions.ConnectionError:
                pass
            time.sleep(0.1)
        assert embedded.restarts == 1
        assert client.get("revoked") == "yes" and client.lrange("turns", 0, -1) == ["a", "b"]
    finally:
        embedded.close()


def test_a_dataset_an_older_llmserve_kept_in_rdb_alone_is_loaded_and_then_kept_in_aof(tmp_path):
    embedded = EmbeddedRedis(tmp_path, supervise=False)
    embedded.client().set("from-rdb", "1")
    embedded.close()
    (tmp_path / "appendonly.aof").unlink()  # what an llmserve before AOF left: llmserve.rdb only
    again = EmbeddedRedis(tmp_path, supervise=False)
    try:
        assert again.client().get("from-rdb") == "1"
        assert again.client().config_get("appendonly")["appendonly"] == "yes" and (tmp_path / "appendonly.aof").exists()
    finally:
        again.close()
