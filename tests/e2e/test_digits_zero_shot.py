"""Real images, fast path: scikit-learn digits -> in-process training -> `clipray eval` on held-out digits.

Training uses the single-process `LocalContext` + `train_loop` (the same loop Ray Train workers
run) to stay fast; evaluation is the real `clipray eval` command: a Ray Data batch-inference stage
embeds the held-out images, results go to a new MLflow run. The full `clipray train` path is
covered by tests/e2e/test_eval_e2e.py.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

from clipray.config import load_config
from clipray.data.pipeline import Preprocess
from clipray.data.realsets import write_digits
from clipray.train.context import LocalContext
from clipray.train.loop import train_loop
from tests.conftest import ROOT, run_clipray

pytestmark = pytest.mark.e2e


def _batches(config, batch_size: int):
    files = sorted(glob.glob(str(Path(config.data.source) / "*.parquet")))
    table = pa.concat_tables([pq.read_table(f) for f in files])
    prep = Preprocess(config, train=True)

    def epoch_batches(epoch: int):
        order = np.random.default_rng(epoch).permutation(table.num_rows)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            t = table.take(pa.array(order[i : i + batch_size]))
            b = prep({"key": t.column("key").to_numpy(zero_copy_only=False),
                      "caption": t.column("caption").to_numpy(zero_copy_only=False),
                      "jpg": t.column("jpg").to_pylist()})
            yield {"image": torch.from_numpy(b["image"]), "tokens": torch.from_numpy(b["tokens"])}

    return epoch_batches


def test_digits_zero_shot_on_held_out_images_well_above_chance(run_env, tmp_path: Path):
    info = write_digits(tmp_path / "digits")
    assert info["eval_rows"] == 450 and info["train_rows"] == 1347
    config = load_config(ROOT / "pipelines/tiny/clip-digits.yaml", [
        f"data.source={tmp_path / 'digits/train'}", f"eval.zeroshot_source={tmp_path / 'digits/eval'}",
        "train.steps=100", "train.num_workers=1", "eval.every_steps=null"])
    torch.set_num_threads(1)
    ckpt = tmp_path / "ckpt"
    train_loop(config, LocalContext(_batches(config, config.train.global_batch_size), checkpoint_dir=str(ckpt)))
    assert (ckpt / "state.pt").exists()

    proc = run_clipray("eval", "--model", str(ckpt), "--data", str(tmp_path / "digits/eval"), "--json",
                       env=run_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for label in ["zero-shot top-1", "image->text R@1", "text->image R@10", "modality gap"]:
        assert f"| {label} |" in proc.stdout, label
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert metrics["eval/images"] == 450 and metrics["eval/zeroshot_classes"] == 10
    assert metrics["eval/zeroshot_top1"] >= 0.3, metrics  # chance is 0.1
    assert 0 < metrics["eval/modality_gap"] < 2

    client = MlflowClient(tracking_uri=run_env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("clipray-eval").experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["clipray.checkpoint"] == str(ckpt)
    assert runs[0].data.metrics["eval/digits/zeroshot_top1"] == pytest.approx(metrics["eval/zeroshot_top1"])
