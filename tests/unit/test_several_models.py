"""Several self-hosted models and LoRA adapters in the settings, as the builder and the provider see them."""

import asyncio
import json

import pytest
from pydantic import ValidationError

from core.errors import ServiceUnavailable
from core.settings import Settings
from deployments.providers.base import GenerationParams
from deployments.providers.self_hosted import ServeLLMEngine


def two_models(tmp_path, **engine) -> Settings:
    return Settings(
        engine={"lora_path": str(tmp_path), "lora_adapters": ["pirate"], "max_replicas": 3, "dtype": "bfloat16"}
        | engine,
        extra_models=[{"model": "org/Other-Model", "max_replicas": 2}],
    )


def test_an_extra_model_inherits_the_hardware_settings_but_not_the_checkpoints(tmp_path):
    primary, other = two_models(tmp_path, kv_cache_memory_bytes=123 * 2**20).engines()
    assert other.model_name == "Other-Model" and other.max_replicas == 2
    assert other.kv_cache_memory_bytes == 123 * 2**20 and other.dtype == "bfloat16"  # inherited
    assert other.lora_adapters == [] and other.lora_path is None  # the primary's adapters are its own
    assert primary.adapters() == {
        "SmolLM2-135M-Instruct:pirate": "SmolLM2-135M-Instruct:pirate",
        "pirate": "SmolLM2-135M-Instruct:pirate",
    }


def test_every_model_and_both_names_of_each_adapter_are_served(tmp_path):
    served = two_models(tmp_path).served_models()
    assert {"SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct:pirate", "pirate", "Other-Model"} <= set(served)


@pytest.mark.parametrize(
    "extra, engine, says",
    [
        ([{"served_model_name": "x"}], {}, "needs `model`"),
        ([{"model": "a/b", "bogus": 1}], {}, "Extra inputs are not permitted"),
        ([{"model": "smollm2"}], {}, "given to two"),
        (
            [{"model": "a/b", "served_model_name": "pirate"}],
            {"lora_path": "/x", "lora_adapters": ["pirate"]},
            "given to two",
        ),
        ([], {"lora_adapters": ["pirate"]}, "needs engine.lora_path"),
        ([], {"lora_path": "/x", "lora_adapters": ["a/b"]}, "LoRA adapter name"),
        ([], {"served_model_name": "a:b"}, "separates a model from its LoRA adapter"),
        ([], {"served_model_name": "cap", "lora_path": "/x", "lora_adapters": ["cap"]}, "has its model's name"),
        ([], {"lora_path": "/x", "lora_adapters": [".."]}, "LoRA adapter name"),
        ([], {"lora_path": "file:///srv/adapters"}, "a folder, or a URI"),
        ([], {"max_lora_rank": 4}, "max_lora_rank"),
        ([{"model": "a", "served_model_name": "all-MiniLM-L6-v2"}], {}, "given to two"),
        ([{"model": "a", "served_model_name": "Smol.x"}, {"model": "b", "served_model_name": "Smol_x"}], {}, "deploy"),
    ],
)
def test_conflicting_models_are_refused(extra, engine, says):
    with pytest.raises(ValidationError, match=says):
        Settings(engine=engine, extra_models=extra)


def test_each_model_gets_its_deployment_and_lora_turns_the_engine_on(tmp_path):
    from deployments.llm import build_llm_config, build_llm_deployments
    from deployments.lora import LOCAL_LORA_PATH, LocalLoraLoader

    settings = two_models(tmp_path)
    primary, other = settings.engines()
    config = build_llm_config(primary, "/models/smol")
    assert config.engine_kwargs["enable_lora"] is True and config.engine_kwargs["max_loras"] == 4
    assert config.lora_config.max_num_adapters_per_replica == 4
    assert config.lora_config.dynamic_lora_loading_path is None  # a local folder: our loader reads it
    assert config.experimental_configs[LOCAL_LORA_PATH] == str(tmp_path.resolve())
    assert "enable_lora" not in build_llm_config(other, "/models/other").engine_kwargs
    remote = build_llm_config(primary.model_copy(update={"lora_path": "s3://bucket/adapters"}), "/models/smol")
    assert remote.lora_config.dynamic_lora_loading_path == "s3://bucket/adapters"
    apps = build_llm_deployments(settings.engines(), {"SmolLM2-135M-Instruct": "/m/a", "Other-Model": "/m/b"})
    assert apps["Other-Model"]._bound_deployment.init_kwargs["model_downloader"] is LocalLoraLoader
    names = {name: app._bound_deployment.name for name, app in apps.items()}
    assert names == {"SmolLM2-135M-Instruct": "LLM:SmolLM2-135M-Instruct", "Other-Model": "LLM:Other-Model"}
    assert apps["Other-Model"]._bound_deployment._deployment_config.autoscaling_config.max_replicas == 2


def test_the_local_loader_reads_an_adapter_in_place_and_refuses_a_missing_one(tmp_path):
    from deployments.lora import LOCAL_LORA_PATH, LocalLoraLoader

    (tmp_path / "pirate").mkdir()
    (tmp_path / "pirate" / "adapter_config.json").write_text(json.dumps({"r": 8}))

    class Config:
        experimental_configs = {LOCAL_LORA_PATH: str(tmp_path)}

    loader = LocalLoraLoader()
    loaded = asyncio.run(loader.load_model_from_config("Base:pirate", Config()))
    assert loaded.local_path == str(tmp_path / "pirate") and loaded.model_id == "Base:pirate"
    with pytest.raises(ValueError, match=r"no adapter_config\.json"):
        asyncio.run(loader.load_model_from_config("Base:parrot", Config()))


def test_preflight_names_adapters_that_are_not_there(tmp_path):
    from serve_app.model_prep import check_lora_adapters

    (tmp_path / "pirate").mkdir()
    (tmp_path / "pirate" / "adapter_config.json").write_text("{}")
    check_lora_adapters(str(tmp_path), ["pirate"])
    check_lora_adapters("s3://bucket/adapters", ["anything"])  # read by the replicas, with their credentials
    with pytest.raises(ValueError, match="parrot"):
        check_lora_adapters(str(tmp_path), ["pirate", "parrot"])
    (tmp_path / "pirate" / "adapter_config.json").write_text(json.dumps({"r": 32}))
    with pytest.raises(ValueError, match="rank 32"):
        check_lora_adapters(str(tmp_path), ["pirate"], max_rank=16)


class Recorder:
    """A deployment handle that records the options and the request it was called with."""

    def __init__(self, name: str, calls: list, options: dict | None = None):
        self.name, self.calls, self.opts = name, calls, options or {}

    def options(self, **options):
        return type(self)(self.name, self.calls, self.opts | options)

    @property
    def chat(self):
        return self

    def remote(self, request):
        self.calls.append((self.name, self.opts, request.model))

        async def stream():
            yield ['data: {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}\n\n']

        return stream()


@pytest.mark.parametrize(
    "asked, deployment, engine_model, multiplexed",
    [
        ("Base", "Base", "Base", None),
        ("Other", "Other", "Other", None),
        ("Base:pirate", "Base", "Base:pirate", "Base:pirate"),
        ("pirate", "Base", "Base:pirate", "Base:pirate"),
    ],
)
def test_a_request_reaches_its_models_deployment_and_an_adapter_by_servess_multiplexing(
    asked, deployment, engine_model, multiplexed
):
    from core.setting_groups import PricingSettings, RoutingSettings
    from deployments.providers.factory import build_providers

    calls: list = []
    adapters = {"Base:pirate": "Base:pirate", "pirate": "Base:pirate"}
    handles = {"Base": Recorder("Base", calls), "Other": Recorder("Other", calls)}
    providers = build_providers(RoutingSettings(), PricingSettings(), handles, adapters)
    [engine] = [p for p in providers if p.serves(asked)]  # one provider per model, its adapters with it
    assert not any(p.serves("Base:parrot") for p in providers)

    async def run():
        return [
            d
            async for d in engine.stream(
                asked, [{"role": "user", "content": "x"}], GenerationParams(max_tokens=8), "r1", affinity="t:c"
            )
        ]

    assert asyncio.run(run())
    [(name, options, model)] = calls
    assert (name, model, options.get("multiplexed_model_id")) == (deployment, engine_model, multiplexed)
    assert options["session_id"] == "t:c" and options["stream"] is True


def test_each_model_is_a_provider_of_its_own_with_its_adapters_slots_and_timeouts(tmp_path):
    from core.provider_config import ProviderConfig
    from deployments.providers.factory import build_providers, build_router

    settings = two_models(tmp_path).updated(
        "routing", providers=[ProviderConfig(name="own", kind="self_hosted", first_token_timeout_s=7)]
    )
    calls: list = []
    handles = {"SmolLM2-135M-Instruct": Recorder("a", calls), "Other-Model": Recorder("b", calls)}
    adapters = {alias: id_ for e in settings.engines() for alias, id_ in e.adapters().items()}
    first, second = build_providers(settings.routing, settings.pricing, handles, adapters)
    assert (first.name, second.name) == ("own", "own/Other-Model")
    assert first.serves("pirate") and first.serves("SmolLM2-135M-Instruct") and not first.serves("Other-Model")
    assert second.serves("Other-Model") and not second.serves("pirate")
    assert set(first.health_checks()) == {"engine"} and set(second.health_checks()) == {"engine:Other-Model"}
    assert first.health_checks(skip={"SmolLM2-135M-Instruct"}) == {}
    router = build_router(settings.routing, [first, second], None, "p", {"SmolLM2-135M-Instruct": 12, "Other-Model": 3})
    assert router.stats.slots == {"own": 12, "own/Other-Model": 3}
    assert router._first_token_timeout_s == {"own": 7, "own/Other-Model": 7}


class Failing(Recorder):
    def remote(self, request):
        async def stream():
            raise ValueError("Failed to load lora model: expected rank <= 16")
            yield

        return stream()


def test_an_adapter_that_cannot_be_loaded_fails_at_once_not_as_a_replica_coming_back():
    from deployments.providers.base import ProviderError

    engine = ServeLLMEngine(Failing("Base", []), "Base", {"pirate": "Base:pirate"})

    async def run(model):
        return [
            d
            async for d in engine.stream(model, [{"role": "user", "content": "x"}], GenerationParams(max_tokens=8), "r")
        ]

    with pytest.raises(ServiceUnavailable, match="'pirate' could not be loaded") as info:
        asyncio.run(run("pirate"))
    assert info.value.code == "adapter_unavailable"  # not a ProviderError: no failover, no breaker charged
    with pytest.raises(ProviderError) as info:  # the base model: an engine fault, worth waiting for
        asyncio.run(run("Base"))
    assert info.value.recovering
