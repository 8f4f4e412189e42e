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
    # Steps 6 and 7 ran but their checkpoint never came: they are not logged (a resume replays them).
    assert sorted(crashed.steps) == list(range(1, 6))
    resumed = Recorder()
    train_loop(cfg, LocalContext(batches, str(tmp_path)), resumed)
    assert sorted(resumed.steps) == list(range(6, 11))
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


class StopAfterCommit(LocalContext):
    """The worker group stops right after the checkpoint of `stop_at` is committed, before the
    metrics it covers are flushed (as an elastic resize or a lost node can)."""

    def __init__(self, *args, stop_at, **kwargs):
        super().__init__(*args, **kwargs)
        self.stop_at = stop_at

    def report(self, metrics, state):
        super().report(metrics, state)
        if metrics["step"] == self.stop_at:
            raise RuntimeError("worker group stopped")


def test_resume_logs_metrics_committed_but_never_flushed(tiny_data, tmp_path):
    cfg = load_config(data=TINY, overrides=["train.steps=15"])
    batches = batches_from(tiny_data, cfg)
    run = RunRecorder()
    with contextlib.suppress(RuntimeError):
        train_loop(cfg, StopAfterCommit(batches, str(tmp_path), stop_at=10), run)
    assert sorted(run.steps) == list(range(1, 6))  # 6-10 are committed in checkpoint 10 but not logged
    train_loop(cfg, LocalContext(batches, str(tmp_path)), run)
    assert run.calls == list(range(1, 16))  # every step once: 6-10 from the checkpoint, then 11-15
