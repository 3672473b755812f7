"""Model providers as settings: the self-hosted vLLM deployment and managed APIs (OpenAI-compatible, Anthropic)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SELF_HOSTED = "self-hosted"


class ProviderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="Shown in responses and metrics.")
    kind: Literal["self_hosted", "openai", "anthropic"]
    base_url: str | None = Field(
        None, description="e.g. https://api.openai.com/v1 or https://api.anthropic.com (managed kinds only)."
    )
    api_key_env: str | None = Field(None, description="Environment variable holding the provider's API key.")
    models: dict[str, str] = Field(
        default_factory=dict,
        description="Our model name -> the provider's model name ('*' for any). Empty: the same name.",
    )
    price_input_per_mtok: float | None = Field(
        None, ge=0, description="USD per 1M prompt tokens. Self-hosted default: the settings' price_input_per_mtok."
    )
    price_output_per_mtok: float | None = Field(None, ge=0, description="USD per 1M completion tokens.")
    connect_timeout_s: float = Field(5.0, gt=0)
    first_token_timeout_s: float = Field(30.0, gt=0, description="Longest wait for the first token of an attempt.")
    idle_timeout_s: float = Field(30.0, gt=0, description="Longest gap between two streamed events.")
    max_connections: int = Field(100, ge=1, description="Pooled HTTP connections to this provider.")
    continuation: Literal["prefill", "vllm"] = Field(
        "prefill",
        description=(
            "How an OpenAI-compatible provider continues a partial answer after a failover: 'prefill' sends it "
            "as a final assistant message; 'vllm' also sets continue_final_message (vLLM servers)."
        ),
    )
    anthropic_version: str = Field("2023-06-01", description="anthropic-version header.")
    send_traceparent: bool = Field(
        True, description="Send the attempt's W3C traceparent header (false: the provider learns no trace ids)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> ProviderConfig:
        if self.kind != "self_hosted" and not self.base_url:
            raise ValueError(f"provider {self.name!r}: base_url is required for kind {self.kind!r}")
        return self

    def upstream_model(self, model: str) -> str | None:
        """The provider's name for our model, or None when it does not serve it."""
        if not self.models:
            return model
        return self.models.get(model) or self.models.get("*")

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


def default_providers() -> list[ProviderConfig]:
    return [ProviderConfig(name=SELF_HOSTED, kind="self_hosted")]
