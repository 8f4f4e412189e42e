"""Non-finite guard in one process: an injected NaN step is skipped and counted, the weights stay
finite; a streak rolls back to the latest checkpoint once, and a second streak fails naming the steps."""

import pytest
import torch

from clipray.config import load_config
from clipray.train.context import LocalContext
from clipray.train.guard import NonFiniteError
from clipray.train.loop import train_loop
from tests.unit.test_loop_local import TINY, Recorder, batches_from


class Weights(LocalContext):
    """Keeps each checkpoint's model weights, to see which steps changed them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.weights = {}
        self.updates = {}  # step -> (optimizer steps, scheduler steps)

    def report(self, metrics, state):
        super().report(metrics, state)
        if state is not None:
            self.weights[state["step"]] = {k: v.clone() for k, v in state["objective"]["model"].items()}
            self.updates[state["step"]] = (int(state["optimizer"]["state"][0]["step"]), state["scheduler"]["last_epoch"])


def test_nonfinite_step_is_skipped_and_counted(tiny_data, tmp_path, monkeypatch):
    cfg = load_config(data=TINY, overrides=["train.steps=6", "train.checkpoint_every=1"])
    monkeypatch.setenv("CLIPRAY_FAULT", "nonfinite@4")
    rec, ctx = Recorder(), Weights(batches_from(tiny_data, cfg), str(tmp_path))
    train_loop(cfg, ctx, rec)
    assert "train/loss" not in rec.steps[4] and rec.steps[4]["train/skipped_steps"] == 1.0
    assert rec.steps[3]["train/skipped_steps"] == 0.0 and rec.steps[6]["train/skipped_steps"] == 1.0
    # No optimizer or scheduler step at step 4 (and no checkpoint amid the skip streak).
    assert ctx.updates == {1: (1, 1), 2: (2, 2), 3: (3, 3), 5: (4, 4), 6: (5, 5)}, ctx.updates
    assert all(torch.isfinite(v).all() for v in ctx.weights[6].values() if v.is_floating_point())
    assert rec.steps[4]["train/lr"] == rec.steps[3]["train/lr"]  # the schedule did not advance at step 4


def test_streak_rolls_back_once_then_fails(tiny_data, tmp_path, monkeypatch):
    cfg = load_config(data=TINY, overrides=["train.steps=8", "train.checkpoint_every=2", "train.max_skipped_steps=3"])
    monkeypatch.setenv("CLIPRAY_FAULT", "nonfinite@4,nonfinite@5,nonfinite@6")
    rec = Recorder()
    with pytest.raises(NonFiniteError, match=r"steps 4-6, 4-6.*rolling back"):
        train_loop(cfg, LocalContext(batches_from(tiny_data, cfg), str(tmp_path)), rec)


def test_one_streak_rolls_back_and_finishes(tiny_data, tmp_path, monkeypatch):
    cfg = load_config(data=TINY, overrides=["train.steps=8", "train.checkpoint_every=2", "train.max_skipped_steps=2"])
    once = tmp_path / "once"
    monkeypatch.setenv("CLIPRAY_FAULT", f"nonfinite@4:once={once}4,nonfinite@5:once={once}5")
    rec = Recorder()
    train_loop(cfg, LocalContext(batches_from(tiny_data, cfg), str(tmp_path / "ckpt")), rec)
    assert sorted(rec.steps) == list(range(1, 9)) and "train/loss" in rec.steps[8]
    # Rolled back to checkpoint 2 (skip count 0 there); steps 3-8 then ran clean.
    assert rec.steps[8]["train/skipped_steps"] == 0.0
