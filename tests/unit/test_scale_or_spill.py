"""The scale-or-spill controller's decisions on a recorded load, and the day simulation's numbers."""

import pytest

from core.scale_or_spill import Economics, History, Load, decide

# A replica: 50 tok/s at full use, $0.09/h; the managed API $2/1M tokens: break-even at 25 % of a replica.
ECONOMICS = Economics(
    replica_hour_usd=0.09,
    managed_usd_per_mtok=2.0,
    replica_tokens_per_s=50.0,
    cold_start_s=75.0,
    ttft_target_s=2.0,
    max_utilisation=0.8,  # 40 tok/s per replica within the TTFT target
    min_replicas=0,
    max_replicas=4,
    downscale_after_s=300.0,
)


def test_break_even_is_a_replicas_hour_over_what_its_tokens_would_cost_managed():
    assert ECONOMICS.break_even_utilisation == pytest.approx(0.09 / (50 * 3600 * 2e-6))
    assert Economics(1.0, 0.0, 50, 60, 2).break_even_utilisation == float("inf")  # free managed: never pays


def run(recorded: list[tuple[float, float, int, int]], economics: Economics = ECONOMICS) -> list:
    """Decisions over a recorded load: (time s, demand tok/s, replicas serving, replicas starting)."""
    history = History()
    return [decide(Load(t, demand, serving, starting), economics, history) for t, demand, serving, starting in recorded]


def test_a_recorded_day_scales_spills_and_pulls_back():
    decisions = run([
        (0, 30, 1, 0),      # fits one replica
        (10, 70, 1, 0),     # a burst: 30 tok/s over, just begun
        (20, 70, 1, 0),     # 10 s old: a replica would start for a burst that may end
        (90, 70, 1, 0),     # 90 s old: expected to last, fills 60 % of a replica: add one, spill meanwhile
        (100, 70, 1, 1),    # it is starting: spill
        (200, 70, 2, 0),    # it serves: traffic stays here
        (300, 20, 2, 0),    # the burst is over: one replica would do...
        (500, 20, 2, 0),    # ...not yet 300 s
        (600, 20, 2, 0),    # 300 s: scale down, nothing spilled
        (700, 8, 1, 0),     # night: 8 tok/s fills 16 % of a replica, below break-even (25 %)...
        (1000, 8, 1, 0),    # ...for 300 s: no replica...
        (1010, 8, 1, 0),    # ...asked again until Serve removed it...
        (1020, 8, 0, 0),    # ...then all goes to the managed provider
    ])  # fmt: skip
    actions = [(d.action, d.replicas, d.spill_fraction) for d in decisions]
    assert actions[0] == ("hold", 1, 0.0)
    assert actions[1][0] == actions[2][0] == "spill" and actions[1][1] == 1
    assert actions[1][2] == pytest.approx(30 / 70, abs=1e-3)
    assert actions[3][:2] == ("scale_up", 2) and actions[3][2] > 0
    assert actions[4][:2] == ("spill", 2)
    assert actions[5] == ("hold", 2, 0.0)
    assert [a[0] for a in actions[6:8]] == ["hold", "hold"]
    assert actions[8] == ("scale_down", 1, 0.0)
    assert actions[9] == ("hold", 1, 0.0)
    assert actions[10] == actions[11] == ("scale_down", 0, 0.0)
    assert actions[12] == ("spill", 0, 1.0)
    assert "break-even" in decisions[10].reason and decisions[3].break_even_utilisation == pytest.approx(0.25)


def test_an_excess_too_small_to_fill_a_replica_is_spilled_however_long_it_lasts():
    decisions = run([(t, 45, 1, 0) for t in range(0, 3600, 60)])  # 5 tok/s over: 10 % of a replica
    assert {d.action for d in decisions} == {"spill"} and {d.replicas for d in decisions} == {1}


def test_a_big_excess_adds_as_many_replicas_as_pay_and_no_more_than_the_ceiling():
    [*_, last] = run([(0, 400, 1, 0), (120, 400, 1, 0)])
    assert last.action == "scale_up" and last.replicas == 4  # 9 would carry it; max_replicas is 4


def test_with_no_managed_provider_it_scales_at_once_and_never_spills():
    alone = Economics(**{**ECONOMICS.__dict__, "managed_available": False})
    first, starting, bigger = run([(0, 45, 1, 0), (10, 45, 1, 1), (20, 100, 1, 1)], alone)
    assert (first.action, first.replicas, first.spill_fraction) == ("scale_up", 2, 0.0)
    assert (starting.action, starting.replicas) == ("hold", 2)  # the one starting will carry it: no more
    assert (bigger.action, bigger.replicas) == ("scale_up", 3)  # 60 over, 40 coming: one more


def test_slow_first_tokens_spill_a_share_without_buying_a_replica():
    decision = decide(Load(0, 30, 1, 0, ttft_s=4.0), ECONOMICS, History())
    assert decision.action == "spill" and decision.replicas == 1 and decision.spill_fraction == 0.5


def test_the_history_survives_a_round_trip_as_serve_keeps_it():
    history = History()
    decide(Load(0, 70, 1, 0), ECONOMICS, history)
    restored = History.from_dict(history.to_dict())
    assert restored == history and restored.excess_since_s == 0


def test_the_simulated_day_repeats_from_its_seed_and_the_controller_pays_less_where_spilling_is_cheap():
    from benchmarks.scale_or_spill import Engine, Traffic, run_all

    def day(managed_usd_per_mtok: float, seed: int = 7) -> dict:
        engine = Engine()
        economics = Economics(
            0.09, managed_usd_per_mtok, engine.tokens_per_s, engine.cold_start_s, 2.0, min_replicas=0, max_replicas=16,
            downscale_after_s=600.0,
        )  # fmt: skip
        return {r.policy: r for r in run_all(economics, engine, Traffic(), seed=seed)}

    first = day(2.0)
    assert [r.summary() for r in first.values()] == [r.summary() for r in day(2.0).values()]
    assert [r.summary() for r in first.values()] != [r.summary() for r in day(2.0, seed=8).values()]
    cheap = day(0.6)
    for by in (cheap, first):  # break-even 79 % and 24 %: the controller is the cheapest way to keep the SLO
        controller, serve = by["controller"].summary(), by["serve-default+spill"].summary()
        assert controller["cost_usd"] < serve["cost_usd"] < by["peak"].summary()["cost_usd"]
        assert controller["slo_attainment"] >= serve["slo_attainment"]
    replicas = {t // 3600: n for t, n, *_ in first["controller"].timeline}
    assert replicas[14] >= 8 and replicas[3] <= 1  # it follows the peak up and the night down
    assert cheap["controller"].summary()["replica_hours"] < cheap["serve-default"].summary()["replica_hours"]


def ctx(running: int, target: int, state: dict, now: float):
    from types import SimpleNamespace

    return SimpleNamespace(
        running_replicas=list(range(running)), target_num_replicas=target, policy_state=state, current_time=now
    )


def test_the_serve_policy_decides_from_the_signals_in_redis_and_the_routers_follow(redis_prefix):
    import asyncio
    import json
    import time

    import redis

    from deployments.scale_or_spill_policy import ScaleOrSpillPolicy
    from state.scaling_signals import BUCKET_S, ScalingSignals
    from tests.conftest import REDIS_URL, redis_client

    economics = {k: v for k, v in ECONOMICS.__dict__.items() if k not in ("replica_tokens_per_s", "managed_available")}
    policy = ScaleOrSpillPolicy(REDIS_URL, redis_prefix, "m", economics, replica_tokens_per_s=50.0)
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    now = (int(time.time()) // BUCKET_S) * BUCKET_S + 1.0  # the start of a bucket: the minute before is complete
    for bucket in range(int(now) // BUCKET_S - 6, int(now) // BUCKET_S):  # 70 tok/s over the last minute
        client.hset(f"{redis_prefix}:sos:{{m}}:{bucket}", mapping={"tokens": 700, "ttft_ms": 400, "ttft_n": 1})
    replicas, state = policy(ctx(1, 1, {"history": {"excess_since_s": now - 120}}, now))
    assert replicas == 2 and state["decided_at"] == now
    stored = json.loads(client.get(f"{redis_prefix}:sos:{{m}}:decision"))
    assert stored["action"] == "scale_up" and stored["numbers"]["demand_tokens_per_s"] == 70.0
    assert stored["tokens_per_s_source"] == "setting"
    assert policy(ctx(1, 2, state, now + 1)) == (2, state)  # within its period: no new decision

    async def routers_side():
        async with redis_client() as aio:
            signals = ScalingSignals(aio, redis_prefix)
            await signals.record("m", 128, 0.5)
            return await signals.spill_fraction("m"), await signals.decisions()

    spill, decisions = asyncio.run(routers_side())
    assert spill == stored["spill_fraction"] > 0 and decisions["m"]["action"] == "scale_up"


def test_without_redis_the_policy_keeps_what_runs():
    from deployments.scale_or_spill_policy import ScaleOrSpillPolicy

    economics = {k: v for k, v in ECONOMICS.__dict__.items() if k not in ("replica_tokens_per_s",)}
    policy = ScaleOrSpillPolicy("redis://127.0.0.1:1/0", "p", "m", economics)
    import time

    started = time.perf_counter()
    replicas, state = policy(ctx(2, 3, {}, 100.0))
    assert replicas == 3 and time.perf_counter() - started < 2  # no retries holding Serve's controller
    assert policy(ctx(2, 3, state, 101.0)) == (3, state)  # and not again at the next tick: at the next decision


def test_the_llm_deployment_gets_the_policy_only_when_asked(tmp_path):
    from core.settings import Settings
    from deployments.llm import build_llm_config
    from serve_app.builder import scaling_arguments

    settings = Settings(
        engine={"autoscaling": "scale_or_spill", "cold_start_s": 60, "max_replicas": 3},
        routing={"strategy": "scale_or_spill"},
    )
    config = build_llm_config(settings.engine, "/m", scaling_arguments(settings)["SmolLM2-135M-Instruct"])
    policy = config.deployment_config["autoscaling_config"]["policy"]
    assert policy["policy_function"] == "deployments.scale_or_spill_policy:ScaleOrSpillPolicy"
    kwargs = policy["policy_kwargs"]
    assert kwargs["model"] == "SmolLM2-135M-Instruct" and kwargs["economics"]["cold_start_s"] == 60
    assert kwargs["economics"]["max_replicas"] == 3 and kwargs["economics"]["managed_available"] is False
    assert config.deployment_config["autoscaling_config"]["downscale_delay_s"] == 0  # the policy keeps time
    plain = build_llm_config(Settings().engine, "/m", scaling_arguments(Settings())["SmolLM2-135M-Instruct"])
    assert "policy" not in plain.deployment_config["autoscaling_config"]


def test_each_model_is_priced_against_the_managed_providers_that_serve_it():
    from core.provider_config import ProviderConfig
    from core.settings import Settings
    from serve_app.builder import scaling_arguments

    managed = [
        ProviderConfig(name="own", kind="self_hosted"),
        ProviderConfig(name="a", kind="openai", base_url="http://a", models={"m1": "x"}, price_output_per_mtok=4.0),
        ProviderConfig(name="b", kind="openai", base_url="http://b", models={"*": "y"}, price_output_per_mtok=9.0),
    ]
    settings = Settings(
        engine={"served_model_name": "m1", "model": "/m1", "tensor_parallel_size": 2},
        extra_models=[{"model": "/m2", "served_model_name": "m2", "tensor_parallel_size": 1}],
        routing={"providers": managed},
        pricing={"gpu_hour_usd": 1.5},
    )
    arguments = scaling_arguments(settings)
    assert arguments["m1"]["self_hosted_provider"] == "own" and arguments["m2"]["self_hosted_provider"] == "own/m2"
    assert arguments["m1"]["economics"]["managed_usd_per_mtok"] == 4.0  # a serves m1 only
    assert arguments["m2"]["economics"]["managed_usd_per_mtok"] == 9.0
    assert (
        arguments["m1"]["economics"]["replica_hour_usd"] == 3.0
        and arguments["m2"]["economics"]["replica_hour_usd"] == 1.5
    )
