"""The one settings model, in nested groups (core/setting_groups.py). Every field can be set as

- an argument: `Settings(engine={"max_replicas": 4})`, or Serve application `args` (`engine: {max_replicas: 4}`);
- an environment variable `LLMSERVE_<GROUP>__<FIELD>` (`LLMSERVE_ENGINE__MAX_REPLICAS=4`; `REDIS_URL` too);
- a YAML file (`LLMSERVE_CONFIG=path.yaml` or `llmserve up --config`), in the same nested shape.

Precedence (highest first): arguments > environment > YAML file > defaults. The flat names of 0.1
(`LLMSERVE_LLM_MAX_REPLICAS`, `rag_top_k: 7`) still work for one release, with a warning (core/legacy_settings.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from core.keys import key_hash
from core.legacy_settings import ENV_PREFIX, flat_env, nest_flat_names, warn_routing_strategy
from core.names import EMBEDDING_MODEL
from core.quantization import check_quantization
from core.setting_groups import (
    DEFAULT_HOME,
    BatchSettings,
    EngineSettings,
    LimitsSettings,
    MetricsSettings,
    PricingSettings,
    RagSettings,
    ReplicaSettings,
    RoutingSettings,
    ServerSettings,
    StateSettings,
)

# What belongs to a model's checkpoint, not to the hardware it runs on: an extra model does not inherit these.
_MODEL_OWN_FIELDS = frozenset(
    {
        "model",
        "served_model_name",
        "quantization",
        "lora_path",
        "lora_adapters",
        "engine_kwargs",
        "tool_call_parser",
        "replica_tokens_per_s",  # what the model's replica delivers, and how long it takes to start
        "cold_start_s",
    }
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    app_name: str = Field("llmserve", description="Serve application name (for serve.get_app_handle).")
    data_dir: Path = Field(DEFAULT_HOME, description="Where Chroma, W&B offline runs and embedded Redis live.")
    master_key: SecretStr | None = Field(
        None, description="Master API key (plaintext, from env). Only its SHA-256 reaches the deployments."
    )
    master_key_sha256: str | None = Field(
        None, description="SHA-256 hex of the master key, for configs that must not hold the plaintext."
    )

    server: ServerSettings = Field(default_factory=ServerSettings, description=ServerSettings.__doc__)
    limits: LimitsSettings = Field(default_factory=LimitsSettings, description=LimitsSettings.__doc__)
    state: StateSettings = Field(default_factory=StateSettings, description=StateSettings.__doc__)
    rag: RagSettings = Field(default_factory=RagSettings, description=RagSettings.__doc__)
    engine: EngineSettings = Field(default_factory=EngineSettings, description=EngineSettings.__doc__)
    extra_models: list[dict[str, Any]] = Field(
        default_factory=list,
        description="More self-hosted models, each its own vLLM deployment, autoscaled on its own: engine fields "
        "for each (at least `model`). Unset fields come from `engine`, except the model's own: "
        f"{', '.join(sorted(_MODEL_OWN_FIELDS))}.",
    )
    pricing: PricingSettings = Field(default_factory=PricingSettings, description=PricingSettings.__doc__)
    routing: RoutingSettings = Field(default_factory=RoutingSettings, description=RoutingSettings.__doc__)
    batch: BatchSettings = Field(default_factory=BatchSettings, description=BatchSettings.__doc__)
    replicas: ReplicaSettings = Field(default_factory=ReplicaSettings, description=ReplicaSettings.__doc__)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description=MetricsSettings.__doc__)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [
            _FlatNamesNested(settings_cls, init_settings, "argument"),
            _Env(settings_cls),
            _FlatEnv(settings_cls),
        ]
        config_file = os.environ.get("LLMSERVE_CONFIG")
        if config_file:
            yaml = YamlConfigSettingsSource(settings_cls, yaml_file=config_file)
            sources.append(_FlatNamesNested(settings_cls, yaml, f"in {config_file}"))
        return tuple(sources)

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # Ray workers run in another cwd: relative paths must be resolved where the settings are built.
        return value.expanduser().resolve()

    @field_validator("master_key_sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value.lower())):
            raise ValueError("master_key_sha256 must be 64 hex characters")
        return value.lower() if value else value

    @model_validator(mode="after")
    def _derived(self) -> Settings:
        # Paths that default to places under data_dir, made absolute here for the same reason as data_dir.
        self.engine = self.engine.model_copy(update={"model_cache_dir": _abs(self.engine.model_cache_dir)})
        # Every name a client sends picks one self-hosted model or adapter (a managed provider may map the same
        # name: it then stands in for it), and none is the embedding model's.
        scaled = [e.model_name for e in self.engines() if e.autoscaling == "scale_or_spill"]
        if scaled and self.routing.strategy != "scale_or_spill":
            raise ValueError(
                f"engine.autoscaling scale_or_spill ({', '.join(scaled)}) needs routing.strategy: scale_or_spill "
                "(the routers spill what the controller decides not to scale for)"
            )
        names: set[str] = {EMBEDDING_MODEL}
        deployments: set[str] = set()
        for engine in self.engines():
            check_quantization(engine.quantization, engine.accelerator, engine.accelerator_type, model_source=None)
            own = {engine.model_name, *engine.adapters()}
            taken = names & own
            if taken:
                raise ValueError(f"model name {sorted(taken)[0]!r} is given to two models or adapters")
            names |= own
            deployment = engine.model_name.replace("/", "--").replace(".", "_")  # as ray.serve.llm names them
            if deployment in deployments:
                raise ValueError(f"model names {engine.model_name!r} and another make one deployment name")
            deployments.add(deployment)
        self.rag = self.rag.model_copy(update={"chroma_path": _abs(self.rag.chroma_path or self.data_dir / "chroma")})
        self.metrics = self.metrics.model_copy(
            update={
                "wandb_dir": _abs(self.metrics.wandb_dir or self.data_dir),
                "wandb_group": self.metrics.wandb_group or self.app_name,
            }
        )
        return self

    # --- derived -----------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.engine.model_name

    def engines(self) -> list[EngineSettings]:
        """Every self-hosted model's settings: `engine` first, then `extra_models` over `engine`'s fields."""
        inherited = self.engine.model_dump(exclude=set(_MODEL_OWN_FIELDS))
        extra = []
        for i, fields in enumerate(self.extra_models):
            if "model" not in fields:
                raise ValueError(f"extra_models[{i}] needs `model` (an HF id or a local path)")
            try:
                extra.append(EngineSettings.model_validate({**inherited, **fields}))
            except ValidationError as exc:
                raise ValueError(f"extra_models[{i}]: {exc}") from None
        return [self.engine, *extra]

    def served_models(self) -> list[str]:
        """Model names clients may ask for: the self-hosted models and their LoRA adapters (both names), and
        those the providers map explicitly (sorted)."""
        names = {m for p in self.routing.providers for m in p.models if m != "*"}
        for engine in self.engines():
            names |= {engine.model_name, *engine.adapters()}
        return sorted(names)

    def master_key_hash(self) -> str | None:
        """SHA-256 hex of the master key; the plaintext never leaves the process that built the settings."""
        if self.master_key is not None:
            return key_hash(self.master_key.get_secret_value())
        return self.master_key_sha256

    def updated(self, group: str, **fields: Any) -> Settings:
        """A copy with fields of one group replaced (validated as the group)."""
        current: Any = getattr(self, group)
        changed = type(current).model_validate({**current.model_dump(), **fields})
        return self.model_copy(update={group: changed})


def _abs(path: Path) -> Path:
    return path.expanduser().resolve()


class _FlatNamesNested(PydanticBaseSettingsSource):
    """Another source's values, with the flat names of 0.1 moved into their groups."""

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource, origin: str):
        super().__init__(settings_cls)
        self._inner = inner
        self._origin = origin

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, "", False

    def __call__(self) -> dict[str, Any]:
        return nest_flat_names(self._inner(), self._origin)


class _FlatEnv(PydanticBaseSettingsSource):
    """0.1's flat environment variables (deprecated) and standard ones (REDIS_URL), below the nested ones."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, "", False

    def __call__(self) -> dict[str, Any]:
        return flat_env()


class _Env(EnvSettingsSource):
    """`LLMSERVE_<GROUP>__<FIELD>`, and a whole group as JSON in `LLMSERVE_<GROUP>`; `LLMSERVE_ROUTING=<name>`
    is 0.1's strategy setting, not the group."""

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        if field_name == "routing" and isinstance(value, str) and not value.lstrip().startswith("{"):
            return warn_routing_strategy(value)
        return super().decode_complex_value(field_name, field, value)
