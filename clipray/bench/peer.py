"""`clipray bench peer`: clipray beside open_clip's own trainer, on the same work, in one run.

The peer is open_clip 3.3.0's training entry point, run as its README tells a user to:
`python -m open_clip_train.main --train-data x.csv --csv-img-key filepath --csv-caption-key title
--dataset-type csv ...`, in the reference environment (.refenv/, built by
scripts/reference-env.sh when missing: open_clip needs torchvision, which does not import beside
clipray's CPU torch). Both sides train the pipeline's CLIP (default: the demo's) on the same
image/caption rows with the same AdamW settings, warm-up + cosine schedule, gradient clipping,
global batch, step count, crop augmentation (RandomResizedCrop area range) and precision, on the
same cores, one after the other:
  - open_clip_train gets the model as a local config folder (`--model local-dir:DIR`, the
    open_clip_config.json that `clipray export` writes: no wrapper script), the rows as a CSV of
    image files and captions, one process, `--peer-workers` DataLoader workers;
  - clipray runs `clipray train PIPELINE --set ...` with the pipeline's worker layout.
Reported: steady-state samples/s (the median rate over `train.log_every`-step intervals after
`--skip-steps`: clipray logs those, open_clip_train logs each step's time, summed here over the
same intervals), the wall time of each training
command (interpreter start to exit), the loss over steps (final loss: the mean of the logged
losses of the last 10% of steps), and image->text / text->image Recall@1/5 on the held-out
split, each model embedding the same decoded held-out pixels and captions with its own tokenizer.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipray.bench import Benchmark, bench_registry
from clipray.errors import InvalidInputError

ROOT = Path(__file__).resolve().parents[2]
PEER_SCRIPT = Path(__file__).with_name("peer_openclip.py")
DATASETS = ("synth", "digits")
PEER = "open_clip_train"
FINAL_FRACTION = 0.1  # final loss: the mean over the last 10% of steps
# open_clip_train 3.3.0's per-step line (train.py, train_one_epoch).
OPEN_CLIP_STEP = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/\d+ .*?Batch \(t\): [\d.]+, ([\d.e+-]+)/s.*?"
                            r" Loss: ([\d.e+-]+) \(")
PRECISION = {"fp32": "fp32", "bf16": "amp_bf16"}  # clipray train.precision -> open_clip --precision


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", choices=DATASETS, default="synth",
                   help="synth: the demo's synthetic shapes (`clipray synth`); digits: scikit-learn's handwritten "
                        "digits (`clipray realdata digits`)")
    p.add_argument("--pipeline", default=str(ROOT / "pipelines" / "demo.yaml"), help="model/optimiser config")
    p.add_argument("--rows", type=int, default=2048, help="synthetic training rows (--data synth)")
    p.add_argument("--steps", type=int, default=96,
                   help="optimizer steps on each side, rounded up to whole epochs (open_clip_train runs epochs)")
    p.add_argument("--batch-size", type=int, default=128, help="global batch")
    p.add_argument("--seed", type=int, default=0, help="data, model init and shuffling seed on both sides")
    p.add_argument("--workers", type=int, default=None,
                   help="clipray Ray Train workers (default: the pipeline's train.num_workers)")
    p.add_argument("--peer-workers", type=int, default=None,
                   help="open_clip_train DataLoader workers (its --workers; default: the pipeline's "
                        "data.concurrency, the number of clipray's preprocessing actors)")
    p.add_argument("--skip-steps", type=int, default=10, help="steps excluded from the steady-state rate")
    p.add_argument("--refenv", default=str(ROOT / ".refenv"), help="open_clip's environment (built when missing)")
    p.add_argument("--keep", default=None, metavar="DIR", help="work in DIR and keep it (logs, checkpoints)")


# ---------------------------------------------------------------- shared settings


def overrides(args: argparse.Namespace, source: Path, steps: int, work: Path) -> list[str]:
    """`--set` values of clipray's run: the bench's data, steps, batch and seed; no in-run eval."""
    out = [f"data.source={source}", "eval.zeroshot_source=null", "eval.every_steps=null",
           f"train.steps={steps}", f"train.global_batch_size={args.batch_size}", f"train.seed={args.seed}",
           f"train.checkpoint_every={steps}", f"train.storage_path={work / 'clipray_runs'}",
           f"tracking.tracking_uri=sqlite:///{work / 'mlflow.db'}"]
    if args.workers is not None:
        out.append(f"train.num_workers={args.workers}")
    return out


def peer_flags(config: Any) -> list[str]:
    """open_clip_train flags for the optimiser, schedule, clipping and precision of `config`."""
    from clipray.models.clip.export import check_exportable

    check_exportable(config, "open_clip")  # only a model open_clip computes identically
    o, t = config.optim, config.train
    problems = []
    if o.schedule != "cosine" or o.min_lr_ratio != 0:
        problems.append(f"optim.schedule={o.schedule}, min_lr_ratio={o.min_lr_ratio} (open_clip's cosine decays to 0)")
    if t.loss != "softmax" or t.micro_batches != 1:
        problems.append(f"train.loss={t.loss}, micro_batches={t.micro_batches} (open_clip: ClipLoss, one batch)")
    if config.model.max_logit_scale != 100:
        problems.append(f"model.max_logit_scale={config.model.max_logit_scale} (open_clip clamps at 100)")
    if problems:
        raise InvalidInputError("clipray bench peer: open_clip_train cannot run these settings: " + "; ".join(problems))
    flags = ["--lr", repr(o.lr), "--beta1", repr(o.betas[0]), "--beta2", repr(o.betas[1]), "--eps", repr(o.eps),
             "--wd", repr(o.weight_decay), "--warmup", str(o.warmup_steps), "--lr-scheduler", "cosine",
             "--precision", PRECISION[t.precision],
             # Both train on RandomResizedCrop(image_size, scale=this area range), bicubic.
             "--aug-cfg", "scale=({},{})".format(*config.image.train_crop_scale)]
    if t.grad_clip is not None:
        flags += ["--grad-clip-norm", repr(t.grad_clip)]
    return flags


def model_folder(config: Any, out: Path) -> Path:
    """The open_clip config folder (`--model local-dir:OUT`): what `clipray export` writes, no weights."""
    from clipray.models.clip.export import (
        OPEN_CLIP_CONFIG,
        open_clip_model_cfg,
        open_clip_preprocess_cfg,
    )

    out.mkdir(parents=True, exist_ok=True)
    meta = {"model_cfg": open_clip_model_cfg(config), "preprocess_cfg": open_clip_preprocess_cfg(config)}
    (out / OPEN_CLIP_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def epochs_for(steps: int, rows: int, batch: int) -> tuple[int, int]:
    """(epochs, steps): open_clip_train drops each epoch's last partial batch and runs whole epochs."""
    per_epoch = rows // batch
    if per_epoch < 1:
        raise InvalidInputError(f"--batch-size {batch} is larger than the {rows} training rows")
    epochs = max(1, math.ceil(steps / per_epoch))
    return epochs, epochs * per_epoch


# ---------------------------------------------------------------- data


def write_csv(source: Path, out: Path, image_column: str = "jpg", caption_column: str = "caption") -> int:
    """The parquet rows under `source` as image files and a tab-separated CSV (filepath, title):
    open_clip_train's `--dataset-type csv` input. Returns the row count."""
    import pyarrow.parquet as pq

    files = sorted(source.glob("*.parquet"))
    if not files:
        raise InvalidInputError(f"{source}: no parquet files to write as CSV")
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(out / "train.csv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")  # open_clip_train's default --csv-separator
        w.writerow(["filepath", "title"])
        for file in files:
            t = pq.read_table(file, columns=[image_column, caption_column])
            for img, cap in zip(t.column(image_column).to_pylist(), t.column(caption_column).to_pylist()):
                if img is None or cap is None:
                    raise InvalidInputError(f"{file}: row {n} has no {image_column} or {caption_column}")
                path = images / f"{n:06d}.img"  # PIL reads the format from the bytes
                path.write_bytes(img)
                w.writerow([str(path), " ".join(str(cap).split())])  # no tab or newline inside a field
                n += 1
    return n


def write_data(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    if args.data == "synth":
        from clipray.data.synth import write_synthetic

        return write_synthetic(out, args.rows, shards=4, seed=args.seed)
    from clipray.data.realsets import write_realset

    return write_realset(args.data, out, seed=args.seed)


# ---------------------------------------------------------------- the two runs


@dataclass
class SideResult:
    wall_s: float
    rates: dict[int, float]  # step -> samples/s
    losses: dict[int, float]  # step -> loss
    metrics: dict[str, float] = field(default_factory=dict)
    params: int = 0


def interval_rates(rates: dict[int, float], batch: int, every: int) -> dict[int, float]:
    """Per-step rates -> the rate over each `every` steps ending at a multiple of `every`: samples
    over summed step times, the interval clipray's `train/samples_per_s` covers there."""
    out = {}
    for end in range(every, max(rates, default=0) + 1, every):
        steps = [s for s in range(end - every + 1, end + 1) if s in rates]
        if len(steps) == every:
            out[end] = every * batch / sum(batch / rates[s] for s in steps)
    return out


def steady_rate(rates: dict[int, float], skip: int, every: int = 1) -> float:
    """Median of the interval rates ending after step `skip`, at multiples of `every` only: clipray
    also logs the last step when it is no multiple, with a rate over a shorter interval."""
    after = [v for s, v in sorted(rates.items()) if s > skip and s % every == 0]
    if not after:
        raise InvalidInputError(f"no logged step after step {skip}: raise --steps or lower --skip-steps")
    return statistics.median(after)


def final_loss(losses: dict[int, float], steps: int, logged: set[int] | None = None) -> float:
    """The mean loss over the last 10% of steps, at the steps in `logged` (both sides' logged
    steps: clipray logs every train.log_every steps, open_clip_train here every step)."""
    last = [v for s, v in losses.items() if s > steps * (1 - FINAL_FRACTION) and (logged is None or s in logged)]
    if not last:
        raise InvalidInputError(f"no logged loss in the last {FINAL_FRACTION:.0%} of {steps} steps")
    return statistics.fmean(last)


def parse_open_clip_log(text: str, batch: int, per_epoch: int) -> tuple[dict[int, float], dict[int, float]]:
    """open_clip_train's per-step log lines -> ({step: samples/s}, {step: loss})."""
    rates, losses = {}, {}
    for m in OPEN_CLIP_STEP.finditer(text):
        step = int(m[1]) * per_epoch + int(m[2]) // batch
        rates[step], losses[step] = float(m[3]), float(m[4])
    return rates, losses


def run_logged(cmd: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None) -> float:
    """Run `cmd` with its output in `log`; its wall time. A failure raises with the log's tail."""
    started = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=env).returncode
    wall = time.perf_counter() - started
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        raise RuntimeError(f"{cmd[0]} {' '.join(cmd[1:4])} ... exited with {code} (log {log}):\n{tail}")
    return wall


def ensure_refenv(refenv: Path) -> Path:
    """The reference environment's Python, built by scripts/reference-env.sh when missing."""
    subprocess.run(["bash", str(ROOT / "scripts" / "reference-env.sh"), str(refenv)], check=True)
    return refenv / "bin" / "python"


def peer_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the peer imports nothing of clipray's
    return env


def run_peer(python: Path, config: Any, csv_path: Path, model_dir: Path, work: Path, epochs: int, per_epoch: int,
             args: argparse.Namespace) -> SideResult:
    logs = work / "open_clip_logs"
    cmd = [str(python), "-m", "open_clip_train.main", "--train-data", str(csv_path), "--csv-img-key", "filepath",
           "--csv-caption-key", "title", "--dataset-type", "csv", "--model", f"local-dir:{model_dir}",
           "--batch-size", str(args.batch_size), "--epochs", str(epochs), *peer_flags(config),
           "--workers", str(args.peer_workers), "--seed", str(args.seed), "--logs", str(logs), "--name", "peer",
           "--log-every-n-steps", "1", "--save-frequency", "0"]
    wall = run_logged(cmd, work / "open_clip.out", work, peer_env())
    rates, losses = parse_open_clip_log((logs / "peer" / "out.log").read_text(), args.batch_size, per_epoch)
    # The rate over the same intervals as clipray's, so both medians estimate the same thing.
    return SideResult(wall, interval_rates(rates, args.batch_size, config.train.log_every), losses)


def run_clipray(pipeline: str, sets: list[str], work: Path) -> tuple[SideResult, str, str]:
    from mlflow.tracking import MlflowClient

    cmd = [sys.executable, "-m", "clipray", "train", pipeline]
    for s in sets:
        cmd += ["--set", s]
    out = work / "clipray.out"
    wall = run_logged(cmd, out, work)
    text = out.read_text()
    found = re.search(r"^mlflow_run_id: (\S+)", text, re.M), re.search(r"^mlflow_tracking_uri: (\S+)", text, re.M)
    if not (found[0] and found[1]):
        raise RuntimeError(f"clipray train printed no mlflow_run_id / tracking uri (log {out})")
    run_id, uri = found[0][1], found[1][1]
    client = MlflowClient(uri)
    rates = {m.step: m.value for m in client.get_metric_history(run_id, "train/samples_per_s")}
    losses = {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")}
    return SideResult(wall, rates, losses), run_id, uri


# ---------------------------------------------------------------- held-out retrieval


def recall(image_emb: Any, text_emb: Any, groups: Any) -> dict[str, float]:
    import numpy as np
    import torch

    from clipray.eval.retrieval import retrieval_metrics

    m = retrieval_metrics(torch.as_tensor(image_emb), torch.as_tensor(text_emb), groups,
                          np.arange(len(text_emb)), ks=(1, 5))
    return {k.removeprefix("eval/"): v for k, v in m.items() if k != "eval/rsum"}


def evaluate(config: Any, run_id: str, uri: str, python: Path, model_dir: Path, checkpoint: Path, eval_dir: Path,
             work: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Held-out Recall@1/5 of (clipray, open_clip): both embed the same decoded pixels and captions."""
    import numpy as np

    from clipray.eval.loading import load_model
    from clipray.eval.retrieval import caption_groups
    from clipray.eval.zeroshot import load_zeroshot_task
    from clipray.models.inputs import embed_images, embed_texts

    task = load_zeroshot_task(config, str(eval_dir))  # decoded through clipray's evaluation image ops
    if task.captions is None or task.images is None:
        raise InvalidInputError(f"{eval_dir}: the held-out split has no captions or images")
    texts, groups = caption_groups(task.captions)
    loaded = load_model(run_id, uri)
    ours = recall(embed_images(loaded.model, task.images, loaded.config),
                  embed_texts(loaded.model, texts, loaded.text_input), groups)
    np.savez(work / "heldout.npz", images=task.images, texts=np.array(texts))
    run_logged([str(python), str(PEER_SCRIPT), "embed", str(model_dir), str(checkpoint), str(work / "heldout.npz"),
                str(work / "peer_emb.npz")], work / "open_clip_embed.out", work, peer_env())
    emb = np.load(work / "peer_emb.npz")
    return ours, recall(emb["image"], emb["text"], groups)


def param_counts(config: Any, python: Path, model_dir: Path) -> tuple[int, int]:
    from clipray.models import build_model

    ours = sum(p.numel() for p in build_model(config.model).parameters())
    out = subprocess.run([str(python), str(PEER_SCRIPT), "params", str(model_dir)], capture_output=True, text=True,
                         env=peer_env(), check=True).stdout
    return ours, int(json.loads(out.strip().splitlines()[-1])["params"])


# ---------------------------------------------------------------- output


ROWS = [("params", "parameters", "{:,.0f}"), ("samples_per_s", "samples/s (steady)", "{:.1f}"),
        ("wall_s", "wall time of the training command (s)", "{:.1f}"), ("final_loss", "final loss", "{:.4f}"),
        ("i2t_r1", "held-out image->text R@1", "{:.3f}"), ("i2t_r5", "held-out image->text R@5", "{:.3f}"),
        ("t2i_r1", "held-out text->image R@1", "{:.3f}"), ("t2i_r5", "held-out text->image R@5", "{:.3f}")]


def summary(side: SideResult, steps: int, skip: int, every: int, logged: set[int]) -> dict[str, float]:
    return {"params": side.params, "samples_per_s": steady_rate(side.rates, skip, every), "wall_s": side.wall_s,
            "final_loss": final_loss(side.losses, steps, logged), **side.metrics}


def format_table(ours: dict[str, float], peer: dict[str, float]) -> str:
    lines = [f"| | clipray | {PEER} | clipray / {PEER} |", "|---|---|---|---|"]
    for key, label, fmt in ROWS:
        ratio = f"{ours[key] / peer[key]:.2f}x" if key in ("samples_per_s", "wall_s") and peer[key] else ""
        lines.append(f"| {label} | {fmt.format(ours[key])} | {fmt.format(peer[key])} | {ratio} |")
    return "\n".join(lines)


def format_losses(ours: dict[int, float], peer: dict[int, float], points: int = 10) -> str:
    """The loss at about `points` evenly spaced steps among those both sides logged."""
    both = sorted(set(ours) & set(peer))
    if not both:
        raise InvalidInputError("the two runs logged no loss at a common step")
    picks = sorted({both[round(i * (len(both) - 1) / max(1, points - 1))] for i in range(points)})
    lines = [f"| step | clipray | {PEER} |", "|---|---|---|"]
    lines += [f"| {step} | {ours[step]:.4f} | {peer[step]:.4f} |" for step in picks]
    return "\n".join(lines)


def parse_table(text: str) -> dict[str, tuple[float, float]]:
    """The side-by-side table back as {label: (clipray, open_clip_train)}."""
    labels = {label for _, label, _ in ROWS}
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] in labels:
            out[cells[0]] = (float(cells[1].replace(",", "")), float(cells[2].replace(",", "")))
    return out


# ---------------------------------------------------------------- the command


def run(args: argparse.Namespace) -> int:
    from clipray.config import load_config

    if args.steps <= args.skip_steps:
        raise InvalidInputError(f"--steps {args.steps} must exceed --skip-steps {args.skip_steps}")
    args.pipeline = str(Path(args.pipeline).resolve())  # both trainers run in the work directory
    python = ensure_refenv(Path(args.refenv))
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # loading clipray's checkpoint for the recall
    with tempfile.TemporaryDirectory(prefix="clipray-bench-peer-") as tmp:
        work = Path(args.keep or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        info = write_data(args, work / "data")
        rows = write_csv(work / "data" / "train", work / "peer_data")
        epochs, steps = epochs_for(args.steps, rows, args.batch_size)
        sets = overrides(args, work / "data" / "train", steps, work)
        config = load_config(args.pipeline, sets)  # fails here, before either side starts
        flags = peer_flags(config)
        if args.peer_workers is None:
            args.peer_workers = config.data.concurrency
        model_dir = model_folder(config, work / "open_clip_model")
        ours_params, peer_params = param_counts(config, python, model_dir)
        if ours_params != peer_params:
            raise RuntimeError(f"the models differ: clipray {ours_params:,} parameters, open_clip {peer_params:,}")
        print(f"data: {args.data}, {rows} training rows, {info['eval_rows']} held out; model: {config.name} "
              f"({ours_params:,} parameters on both sides); global batch {args.batch_size}, {steps} steps "
              f"({epochs} epoch(s) of {rows // args.batch_size}), seed {args.seed}, {os.cpu_count()} cores", flush=True)
        print(f"{PEER}: {python} -m open_clip_train.main ... --model local-dir:{model_dir} {' '.join(flags)} "
              f"--workers {args.peer_workers}", flush=True)
        peer = run_peer(python, config, work / "peer_data" / "train.csv", model_dir, work, epochs,
                        rows // args.batch_size, args)
        print(f"{PEER} done in {peer.wall_s:.1f} s", flush=True)
        ours, run_id, uri = run_clipray(args.pipeline, sets, work)
        print(f"clipray done in {ours.wall_s:.1f} s (run {run_id})", flush=True)
        ours.params, peer.params = ours_params, peer_params
        ours.metrics, peer.metrics = evaluate(config, run_id, uri, python, model_dir,
                                              work / "open_clip_logs" / "peer" / "checkpoints" / f"epoch_{epochs}.pt",
                                              work / "data" / "eval", work)
        logged = set(ours.losses) & set(peer.losses)
        every = config.train.log_every
        ours_s = summary(ours, steps, args.skip_steps, every, logged)
        peer_s = summary(peer, steps, args.skip_steps, every, logged)
        print(f"\nsamples/s: median rate over {config.train.log_every}-step intervals after step {args.skip_steps}; final loss: mean loss over the last "
              f"{FINAL_FRACTION:.0%} of steps, at the steps both sides logged; recall on {info['eval_rows']} held-out images\n")
        print(format_table(ours_s, peer_s))
        print("\nloss over steps:\n")
        print(format_losses(ours.losses, peer.losses))
    return 0


bench_registry.register("peer")(Benchmark(
    help="clipray beside open_clip's own trainer (open_clip_train) on the same model, data and optimiser",
    add_arguments=add_arguments, run=run))
