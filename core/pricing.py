"""What tokens cost: one price type and the one rule that picks a provider's price.

Self-hosted tokens are priced by the settings' `pricing` group (they feed budgets and usage like any other);
a managed provider by its own `price_*_per_mtok`, zero when it gives none.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.provider_config import ProviderConfig
from core.setting_groups import PricingSettings


@dataclass(frozen=True)
class Price:
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for this many tokens."""
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6


def self_hosted_price(pricing: PricingSettings) -> Price:
    return Price(pricing.input_per_mtok, pricing.output_per_mtok)


def price_of(config: ProviderConfig, pricing: PricingSettings) -> Price:
    """A provider's price: its own where it sets one, else the self-hosted price (self-hosted) or zero."""
    default = self_hosted_price(pricing) if config.kind == "self_hosted" else Price()
    return Price(
        default.input_per_mtok if config.price_input_per_mtok is None else config.price_input_per_mtok,
        default.output_per_mtok if config.price_output_per_mtok is None else config.price_output_per_mtok,
    )
