"""Parameter counts per tower, printed at start-up and logged as MLflow params."""

from __future__ import annotations

from typing import Any

from clipray.config.schema import ModelConfig


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    """`model.parameter_counts()` of the family's model, built on the meta device (no memory)."""
    import torch

    from clipray.models import build_model

    with torch.device("meta"):
        model = build_model(config)
    counts = getattr(model, "parameter_counts", None)
    return dict(counts()) if counts else {"total": sum(p.numel() for p in model.parameters())}


def format_counts(family: str, counts: dict[str, int]) -> str:
    return f"[clipray] {family} parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M ({v:,})" for k, v in counts.items())


def log_parameter_counts(tracker: Any, config: ModelConfig) -> dict[str, int]:
    """Print the counts and log them as params `model/params/<tower>`."""
    counts = parameter_counts(config)
    print(format_counts(config.family, counts), flush=True)
    tracker.log_params({f"model/params/{k}": v for k, v in counts.items()})
    return counts
