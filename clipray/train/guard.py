"""Non-finite guard: a step whose loss or gradient norm is NaN/Inf on any worker changes nothing.

One bad batch (or an overflow at low precision) makes the loss or a gradient non-finite; applying
that update ruins the weights for the rest of the run. Every rank checks its own loss and
gradient norm, the flag is all-reduced (MAX) so that all ranks take the same decision, and a bad
step is skipped everywhere: no optimizer, scheduler or momentum-model update. The step counter
still advances (the batch is consumed), as in Megatron-LM's skipped iterations.

`train.max_skipped_steps` consecutive skips mean the state itself is bad: `NonFiniteStreak` asks
the loop to roll back to the latest checkpoint; a second streak in the same process raises
`NonFiniteError` naming the skipped steps of both streaks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist

from clipray.errors import UserError
from clipray.train.faults import fault_at


class NonFiniteStreak(Exception):
    """`max_skipped_steps` consecutive non-finite steps: roll back to the latest checkpoint."""

    def __init__(self, steps: list[int]) -> None:
        super().__init__(f"steps {steps[0]}-{steps[-1]} were all non-finite")
        self.steps = steps


class NonFiniteError(UserError, RuntimeError):
    """Non-finite steps came back after a rollback: the run cannot go on."""


class NonFiniteGuard:
    def __init__(self, max_consecutive: int, rank: int, world_size: int, device: torch.device,
                 skipped: int = 0) -> None:
        self.max_consecutive = max_consecutive
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.skipped = skipped  # in the run so far (from the checkpoint), for train/skipped_steps
        self.streak: list[int] = []

    def inject(self, losses: dict[str, torch.Tensor], parameters: Iterable[torch.nn.Parameter], step: int) -> None:
        """`CLIPRAY_FAULT=nonfinite@S`: make this step's loss, and so its gradients, NaN (tests)."""
        if not fault_at("nonfinite", step=step, rank=self.rank):
            return
        for key in losses:
            losses[key] = losses[key] * math.nan
        for p in parameters:
            if p.grad is not None:
                p.grad.fill_(math.nan)  # what backward() of a NaN loss produces

    def ok(self, losses: dict[str, torch.Tensor], grad_norm: torch.Tensor | float, step: int) -> bool:
        """Collective: True if every rank's loss and gradient norm are finite at `step`."""
        finite = all(math.isfinite(float(v.detach().float().sum())) for v in losses.values())
        finite = finite and math.isfinite(float(grad_norm))
        bad = torch.tensor([0.0 if finite else 1.0], device=self.device)
        if self.world_size > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item() == 0.0:
            self.streak.clear()
            return True
        self.skipped += 1
        self.streak.append(step)
        if len(self.streak) >= self.max_consecutive:
            raise NonFiniteStreak(list(self.streak))
        return False
