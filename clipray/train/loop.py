"""The training loop shared by every model family.

batch -> objective -> backward -> clip -> (skip if non-finite) step -> maybe log / checkpoint,
until train.steps. Resuming is the same path as starting: the state (model, optimizer, scheduler,
step, epoch, RNG) comes from the latest checkpoint when there is one; so is the one rollback
after a streak of non-finite steps (`clipray.train.guard`).
"""

from __future__ import annotations

import math
import random
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from clipray.config import PipelineConfig, to_dict
from clipray.eval.periodic import PeriodicEval
from clipray.tracking import NullTracker, Tracker
from clipray.train.context import TrainContext
from clipray.train.durable import ExactlyOnceTracker, SampleLog
from clipray.train.faults import maybe_die
from clipray.train.guard import NonFiniteError, NonFiniteGuard, NonFiniteStreak
from clipray.train.objectives import Report, build_objective
from clipray.train.optim import build_optimizer, build_scheduler
from clipray.train.parallel import clip_grad_norm


def train_loop(config: PipelineConfig, ctx: TrainContext, tracker: Tracker | None = None,
               init_model: dict[str, Any] | None = None) -> dict[str, float]:
    """Train until `config.train.steps`; returns the last logged metrics.

    Metrics reach `tracker` as they are computed; steps replayed after a restart that the run
    already holds are not logged again (`ExactlyOnceTracker`). `init_model` warm-starts the model
    weights (not the optimizer) when there is no checkpoint.
    """
    once = ExactlyOnceTracker(tracker or NullTracker())
    streaks: list[list[int]] = []
    while True:
        try:
            return _train(config, ctx, once, init_model)
        except NonFiniteStreak as streak:
            streaks.append(streak.steps)
            if len(streaks) > 1:
                raise NonFiniteError(
                    f"non-finite loss or gradient norm at steps {', '.join(_span(s) for s in streaks)}, "
                    f"{config.train.max_skipped_steps} in a row each time, again after rolling back to "
                    f"the latest checkpoint: stopping (lower optim.lr, check the data, or use fp32)") from None
            if ctx.rank == 0:
                _say(f"non-finite loss or gradient norm at steps {_span(streak.steps)}: rolling back to the "
                     f"latest checkpoint")


def _span(steps: list[int]) -> str:
    return f"{steps[0]}-{steps[-1]}" if len(steps) > 1 else str(steps[0])


def _train(config: PipelineConfig, ctx: TrainContext, tracker: ExactlyOnceTracker,
           init_model: dict[str, Any] | None) -> dict[str, float]:
    tc = config.train
    samples = SampleLog(tc.sample_log, ctx.rank, ctx.world_size) if tc.sample_log else None
    torch.manual_seed(tc.seed)  # same initial weights on every rank
    objective = build_objective(config, rank=ctx.rank, world_size=ctx.world_size, device=ctx.device)
    optimizer = build_optimizer(objective.module, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, tc.steps)
    step, epoch, resumed_epoch = 0, 0, None
    state = ctx.latest_state()
    if state is not None:
        objective.load_state_dict(state["objective"])
        objective.load_optimizer_state_dict(optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])  # the LR schedule continues from the step
        step, epoch, resumed_epoch = state["step"], state["epoch"], state["epoch"]
        _set_rng(state["rng"])
        ctx.load_data_state(state.get("data"))
    elif init_model is not None:
        objective.module.load_state_dict(init_model)
    if ctx.rank == 0:
        _say(f"training {config.model.family} from step {step} to {tc.steps} on {ctx.world_size} worker(s), "
             f"{ctx.device}")
    objective.train()
    guard = NonFiniteGuard(tc.max_skipped_steps, ctx.rank, ctx.world_size, ctx.device,
                           skipped=state.get("skipped_steps", 0) if state is not None else 0)

    def autocast() -> torch.autocast:
        return torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16")

    metrics: dict[str, float] = {}
    periodic_eval = PeriodicEval(config, ctx.rank)
    last = time.perf_counter()
    first_step, loop_start = step, last  # for the ETA
    last_logged = step  # the rate covers the steps since the last log: fewer than log_every at the end
    preempted = False  # after a preemption notice every step is checkpointed: a restart replays <= 1
    while step < tc.steps:
        seen = 0
        for batch in ctx.batches(epoch):
            seen += 1
            optimizer.zero_grad(set_to_none=True)
            losses, report = objective.forward_backward(batch, autocast)
            guard.inject(losses, objective.parameters(), step + 1)
            grad_norm = clip_grad_norm(objective.parameters(), tc.grad_clip)
            if guard.ok(losses, grad_norm, step + 1):
                optimizer.step()
                scheduler.step()
                objective.after_step()
            step += 1
            if samples is not None:
                samples.write(step, epoch, batch.get("key", []))  # type: ignore[arg-type]
            if step % tc.log_every == 0 or step == tc.steps:
                now = time.perf_counter()
                metrics = _metrics(losses, report, ctx, optimizer, grad_norm,
                                   samples_per_s=tc.global_batch_size * (step - last_logged) / (now - last),
                                   skipped=guard.skipped)
                last, last_logged = now, step
                tracker.log_metrics(metrics, step)
                if ctx.rank == 0 and (step % max(tc.log_every, 10) == 0 or step == tc.steps):
                    eta = (now - loop_start) / (step - first_step) * (tc.steps - step)
                    _say(f"step {step}/{tc.steps} loss {metrics.get('train/loss', math.nan):.4f} lr {metrics['train/lr']:.2e} "
                         f"{metrics['train/samples_per_s']:.0f} samples/s ETA {int(eta) // 60}m{int(eta) % 60:02d}s")
            if periodic_eval.due(step):
                tracker.log_metrics(periodic_eval(objective.module, ctx.device), step)
            maybe_die("step", step=step, rank=ctx.rank)
            if not preempted and tc.preemption_check_every and step % tc.preemption_check_every == 0:
                preempted = ctx.preemption_notice()
                if preempted and ctx.rank == 0:
                    _say(f"preemption notice at step {step}: checkpointing every step until the node goes")
            # Not amid a streak of skipped steps: a rollback must reach the state before it.
            if (step % tc.checkpoint_every == 0 and not guard.streak) or step == tc.steps or preempted:
                full = _state(objective, optimizer, scheduler, step, epoch, config, ctx.data_state())
                full["skipped_steps"] = guard.skipped
                ctx.report({"step": step, **metrics}, full if ctx.rank == 0 else None)
            if step >= tc.steps:
                break
        if seen == 0 and epoch != resumed_epoch:
            raise RuntimeError(f"epoch {epoch} yielded no batch: the dataset has fewer rows than one "
                               f"batch per worker ({tc.local_batch_size(ctx.world_size)})")
        epoch += 1
    return metrics


def _say(message: str) -> None:
    # Ray Train routes print() through its logger *and* the worker's stdout (each line would show
    # twice on the driver); one direct write shows once.
    sys.stdout.write(f"[clipray] {message}\n")
    sys.stdout.flush()


def _metrics(losses: dict[str, torch.Tensor], report: Report, ctx: TrainContext,
             optimizer: torch.optim.Optimizer, grad_norm: torch.Tensor, samples_per_s: float,
             skipped: int) -> dict[str, float]:
    values = torch.stack([v.detach().float() for v in losses.values()])
    if ctx.world_size > 1:  # each rank holds the loss of its rows; the batch loss is their mean
        dist.all_reduce(values)
        values /= ctx.world_size
    out = {f"train/{k}": float(v) for k, v in zip(losses, values.tolist())}
    out.update({f"train/{k}": float(v) for k, v in report.items()})
    out["train/lr"] = optimizer.param_groups[0]["lr"]
    out["train/grad_norm"] = float(grad_norm)
    out["train/samples_per_s"] = samples_per_s
    out["train/world_size"] = float(ctx.world_size)
    out["train/skipped_steps"] = float(skipped)
    return {k: v for k, v in out.items() if math.isfinite(v)}  # a skipped step's NaN loss is not a point


def _state(objective: Any, optimizer: torch.optim.Optimizer, scheduler: Any, step: int, epoch: int,
           config: PipelineConfig, data: dict[str, Any] | None) -> dict[str, Any]:
    """Called on every rank (a collective under FSDP); only rank 0's result is written."""
    return {
        "objective": objective.state_dict(),
        "optimizer": objective.optimizer_state_dict(optimizer),
        "data": data,
        "scheduler": scheduler.state_dict(),
        "step": step,
        "epoch": epoch,
        "rng": _get_rng(),
        "config": to_dict(config),
    }


def _get_rng() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
