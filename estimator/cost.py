"""GPU prices and what a fleet costs: $/hour and $ per million output tokens.

The default table is on-demand cloud list prices per GPU-hour, rounded (late 2025, the middle of
the big providers' 8-GPU instance prices divided by 8). They set the ranking among fleets of equal
GPU count across systems; for your own contract price pass ``--gpu-price`` (one number for the
study's system, or ``system=price`` pairs).
"""

from __future__ import annotations

import math

from .errors import SpecError

DEFAULT_GPU_PRICE_USD_PER_HOUR: dict[str, float] = {
    "a30": 0.9,
    "l4": 0.8,
    "l40s": 1.3,
    "a100_pcie": 1.6,
    "a100_sxm": 1.8,
    "h100_pcie": 2.5,
    "h100_sxm": 3.0,  # Dynamo's DEFAULT_GPU_COST_PER_HOUR
    "h200_sxm": 3.8,
    "b60": 1.0,
    "rtx_pro_6000_server": 1.9,
    "b200_sxm": 5.5,
    "b300_sxm": 7.0,
    "gb200": 6.5,
    "gb300": 8.0,
}


def gpu_price(system: str, override: float | None = None) -> float:
    """$/GPU-hour for ``system``: the override, else the default table."""
    if override is not None:
        if not (override > 0 and math.isfinite(override)):
            raise SpecError("gpu_price", f"must be a positive number, got {override!r}")
        return float(override)
    try:
        return DEFAULT_GPU_PRICE_USD_PER_HOUR[system]
    except KeyError:
        raise SpecError("gpu_price", f"no default price for system {system!r}; pass --gpu-price") from None


def usd_per_hour(total_gpus: int, price_per_gpu_hour: float) -> float:
    return total_gpus * price_per_gpu_hour


def usd_per_million_output_tokens(usd_hour: float, request_rate: float, mean_osl: float) -> float:
    """What one million generated tokens cost when the fleet serves ``request_rate`` requests/s."""
    tokens_per_hour = request_rate * mean_osl * 3600.0
    return usd_hour / tokens_per_hour * 1e6 if tokens_per_hour > 0 else math.inf


__all__ = ["DEFAULT_GPU_PRICE_USD_PER_HOUR", "gpu_price", "usd_per_hour", "usd_per_million_output_tokens"]
