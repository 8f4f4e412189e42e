"""The training loop in one process (LocalContext): loss falls, checkpoints resume exactly."""

import contextlib

import pyarrow.parquet as pq
import torch

from clipray.config import load_config
from clipray.data.pipeline import Preprocess
from clipray.train.context import LocalContext
from clipray.train.loop import train_loop

TINY = {"name": "t", "model": {"embed_dim": 32, "vision": {"image_size": 32, "patch_size": 8, "width": 32,
                                                           "layers": 1, "heads": 2},
                               "text": {"context_length": 16, "width": 32, "layers": 1, "heads": 2}},
        "optim": {"lr": 2e-3, "warmup_steps": 2},
        "train": {"global_batch_size": 32, "num_workers": 1, "log_every": 1, "checkpoint_every": 5}}


def batches_from(tiny_data, cfg):
    table = pq.read_table(tiny_data / "train")
    prep = Preprocess(cfg, train=True)
    out = prep({k: table.column(k).to_numpy(zero_copy_only=False) for k in ("key", "caption", "jpg")})
    images, tokens = torch.from_numpy(out["image"]), torch.from_numpy(out["tokens"])
    bs = cfg.per_worker_batch_size

    def epoch(_):
        for i in range(0, len(images) - bs + 1, bs):
            yield {"image": images[i : i + bs], "tokens": tokens[i : i + bs]}

    return epoch


class Recorder:
    run_id = None

    def __init__(self):
        self.steps = {}

    def log_metrics(self, metrics, step):
        self.steps[step] = dict(metrics)


def test_loss_falls(tiny_data):
    cfg = load_config(data=TINY, overrides=["train.steps=30"])
    rec = Recorder()
    train_loop(cfg, LocalContext(batches_from(tiny_data, cfg)), rec)
    first = sum(rec.steps[s]["train/loss"] for s in (1, 2, 3)) / 3
    last = sum(rec.steps[s]["train/loss"] for s in (28, 29, 30)) / 3
    assert last < first - 0.3, (first, last)
    assert {"train/loss", "train/lr", "train/logit_scale", "train/samples_per_s", "train/world_size"} <= set(rec.steps[30])


def test_crash_then_resume_from_checkpoint(tiny_data, tmp_path):
    cfg = load_config(data=TINY, overrides=["train.steps=10"])
    batches = batches_from(tiny_data, cfg)
    straight = Recorder()
    train_loop(cfg, LocalContext(batches), straight)

    def crashing(epoch):
        for i, b in enumerate(batches(epoch)):
            if i == 7:
                raise RuntimeError("worker lost")
            yield b

    crashed = Recorder()
    with contextlib.suppress(RuntimeError):
        train_loop(cfg, LocalContext(crashing, str(tmp_path)), crashed)
    # Steps 6 and 7 ran and were logged as they ran, though their checkpoint never came.
    assert sorted(crashed.steps) == list(range(1, 8))
    resumed = Recorder()
    train_loop(cfg, LocalContext(batches, str(tmp_path)), resumed)
    assert sorted(resumed.steps) == list(range(6, 11))  # a tracker that cannot say what it holds gets the replay
    for step in range(6, 11):  # the schedule continues from the step count
        assert resumed.steps[step]["train/lr"] == straight.steps[step]["train/lr"]


class RunRecorder(Recorder):
    """One run's metric history across restarts, which can say what it holds (as MLflow can)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def log_metrics(self, metrics, step):
        self.calls.append(step)
        super().log_metrics(metrics, step)

    def logged_steps(self, key):
        return {step for step, metrics in self.steps.items() if key in metrics}


def test_metrics_exactly_once_across_restarts(tiny_data, tmp_path):
    """Logged at once (before any checkpoint); a restart logs only the replayed steps the run lacks."""
    cfg = load_config(data=TINY, overrides=["train.steps=15"])
    batches = batches_from(tiny_data, cfg)

    def crash_at(n):
        def crashing(epoch):
            for i, b in enumerate(batches(epoch)):
                if i == n:
                    raise RuntimeError("worker lost")
                yield b
        return crashing

    run = RunRecorder()
    with contextlib.suppress(RuntimeError):  # before the first checkpoint (5): steps 1-3 logged
        train_loop(cfg, LocalContext(crash_at(3), str(tmp_path)), run)
    assert run.calls == [1, 2, 3]
    with contextlib.suppress(RuntimeError):  # from scratch again, then lost after step 8
        train_loop(cfg, LocalContext(crash_at(8), str(tmp_path)), run)
    assert run.calls == list(range(1, 9))
    train_loop(cfg, LocalContext(batches, str(tmp_path)), run)  # from checkpoint 5: 6-8 held, 9-15 new
    assert run.calls == list(range(1, 16))
