"""`clipray bench peer`'s parts that need neither trainer: the CSV the peer reads, the settings both
sides get, the parsing of open_clip_train's log and the printed tables; and (in the reference
environment) that open_clip builds a model with exactly clipray's parameter count."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipray.bench import peer
from clipray.config import load_config
from clipray.errors import InvalidInputError
from tests.unit.test_export import reference_python

DEMO = str(Path(__file__).resolve().parents[2] / "pipelines" / "demo.yaml")
# Lines as open_clip_train 3.3.0 logs them (train.py), from a real run with batch 64, 8 steps per epoch.
LOG = """\
2026-12-08,02:24:18 | INFO | Running with a single process. Device cpu.
2026-12-08,02:24:25 | INFO | Train Epoch: 0 [ 64/512 (12%)] Data (t): 0.163 Batch (t): 6.215, 10.2974/s, \
10.2974/s/gpu LR: 0.000033 Logit Scale: 14.286 Contrastive_loss: 4.8880 (4.8880) Loss: 4.8880 (4.8880)
2026-12-08,02:24:30 | INFO | Train Epoch: 0 [128/512 (25%)] Data (t): 0.012 Batch (t): 4.956, 12.9137/s, \
12.9137/s/gpu LR: 0.000067 Logit Scale: 14.285 Contrastive_loss: 4.6411 (4.7645) Loss: 4.6411 (4.7645)
2026-12-08,02:24:52 | INFO | Train Epoch: 1 [512/512 (100%)] Data (t): 0.005 Batch (t): 2.305, 27.7617/s, \
27.7617/s/gpu LR: 0.000533 Logit Scale: 14.257 Contrastive_loss: 2.9188 (3.1814) Loss: 2.9188 (3.1814)
"""


def png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_write_csv_gives_open_clip_each_row_as_an_image_file_and_its_caption(tmp_path):
    src = tmp_path / "train"
    src.mkdir()
    images = [png((255, 0, 0)), png((0, 255, 0)), png((0, 0, 255))]
    pq.write_table(pa.table({"jpg": images[:2], "caption": ["a red\tsquare", "a green\nsquare"]}),
                   src / "part-00000.parquet")
    pq.write_table(pa.table({"jpg": images[2:], "caption": ['a "blue" square']}), src / "part-00001.parquet")
    assert peer.write_csv(src, tmp_path / "peer") == 3
    with open(tmp_path / "peer" / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))  # open_clip_train's default --csv-separator
    assert [r["title"] for r in rows] == ["a red square", "a green square", 'a "blue" square']
    assert [Path(r["filepath"]).read_bytes() for r in rows] == images
    assert Image.open(rows[2]["filepath"]).getpixel((0, 0)) == (0, 0, 255)


def test_write_csv_refuses_a_row_without_caption(tmp_path):
    src = tmp_path / "train"
    src.mkdir()
    pq.write_table(pa.table({"jpg": [png((1, 2, 3))], "caption": pa.array([None], pa.string())}),
                   src / "part-00000.parquet")
    with pytest.raises(InvalidInputError, match=r"part-00000\.parquet: row 0 has no jpg or caption"):
        peer.write_csv(src, tmp_path / "peer")


def test_steps_round_up_to_whole_epochs():
    assert peer.epochs_for(96, 2048, 128) == (6, 96)
    assert peer.epochs_for(100, 2048, 128) == (7, 112)
    assert peer.epochs_for(5, 1347, 128) == (1, 10)  # partial last batch dropped, as open_clip does
    with pytest.raises(InvalidInputError, match="larger than the 100 training rows"):
        peer.epochs_for(10, 100, 128)


def test_open_clip_gets_the_pipelines_optimiser_schedule_crop_and_precision():
    config = load_config(DEMO)
    assert peer.peer_flags(config) == [
        "--lr", "0.001", "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-06", "--wd", "0.1", "--warmup", "30",
        "--lr-scheduler", "cosine", "--precision", "fp32", "--aug-cfg", "scale=(0.9,1.0)", "--grad-clip-norm", "1.0"]
    flags = peer.peer_flags(load_config(DEMO, ["train.precision=bf16", "train.grad_clip=null",
                                              "image.train_crop_scale=[0.5, 1.0]"]))
    assert "amp_bf16" in flags and "--grad-clip-norm" not in flags and "scale=(0.5,1.0)" in flags


@pytest.mark.parametrize("override, message", [
    ("optim.schedule=constant", "optim.schedule=constant"),
    ("optim.min_lr_ratio=0.1", "min_lr_ratio=0.1"),
    ("train.loss=sigmoid", "train.loss=sigmoid"),
    ("model.max_logit_scale=50", "max_logit_scale=50"),
])
def test_settings_open_clip_cannot_run_are_refused(override, message):
    with pytest.raises(InvalidInputError, match=message):
        peer.peer_flags(load_config(DEMO, [override]))


def test_open_clip_log_parses_to_per_step_rates_and_losses():
    rates, losses = peer.parse_open_clip_log(LOG, batch=64, per_epoch=8)
    assert rates == {1: 10.2974, 2: 12.9137, 16: 27.7617}
    assert losses == {1: 4.8880, 2: 4.6411, 16: 2.9188}


def test_open_clip_step_rates_become_rates_over_clipray_s_log_intervals():
    # Steps of 1 s, 1 s and 2 s at batch 10: 30 samples in 4 s. Step 5 only starts an interval.
    rates = {1: 10.0, 2: 10.0, 3: 5.0, 4: 10.0, 5: 10.0, 6: 10.0, 7: 10.0}
    assert peer.interval_rates(rates, batch=10, every=3) == {3: pytest.approx(7.5), 6: pytest.approx(10.0)}
    assert peer.interval_rates({1: 10.0, 3: 10.0}, batch=10, every=3) == {}  # a step missing: no interval


def test_steady_rate_and_final_loss():
    assert peer.steady_rate({1: 5.0, 2: 90.0, 3: 100.0, 4: 110.0}, skip=1) == 100.0
    # clipray's last logged step (no multiple of log_every) covers a shorter interval: left out.
    assert peer.steady_rate({5: 5.0, 10: 90.0, 15: 100.0, 17: 500.0}, skip=5, every=5) == 95.0
    with pytest.raises(InvalidInputError, match="after step 4"):
        peer.steady_rate({1: 5.0, 4: 6.0}, skip=4)
    losses = {s: float(s) for s in range(1, 101)}
    assert peer.final_loss(losses, 100) == pytest.approx(95.5)  # steps 91..100
    assert peer.final_loss(losses, 100, logged={95, 100, 50}) == pytest.approx(97.5)


def test_tables_print_both_sides_and_parse_back():
    ours = {"params": 8299417, "samples_per_s": 60.0, "wall_s": 500.0, "final_loss": 0.65,
            "i2t_r1": 0.2, "i2t_r5": 0.6, "t2i_r1": 0.25, "t2i_r5": 0.5}
    theirs = {**ours, "samples_per_s": 66.0, "wall_s": 400.0, "final_loss": 0.71}
    text = peer.format_table(ours, theirs)
    assert "| samples/s (steady) | 60.0 | 66.0 | 0.91x |" in text
    parsed = peer.parse_table(text)
    assert parsed["parameters"] == (8299417, 8299417)
    assert parsed["wall time of the training command (s)"] == (500.0, 400.0)
    assert parsed["final loss"] == (0.65, 0.71)
    assert set(parsed) == {label for _, label, _ in peer.ROWS}
    curve = peer.format_losses({5: 4.0, 10: 3.0, 15: 2.0}, {s: 10.0 - s / 10 for s in range(1, 16)}, points=3)
    assert curve.splitlines()[2:] == ["| 5 | 4.0000 | 9.5000 |", "| 10 | 3.0000 | 9.0000 |",
                                      "| 15 | 2.0000 | 8.5000 |"]


def test_open_clip_builds_the_demo_model_with_clipray_s_parameter_count(tmp_path):
    python = reference_python()
    config = load_config(DEMO)
    folder = peer.model_folder(config, tmp_path / "model")
    ours, theirs = peer.param_counts(config, Path(python), folder)
    assert ours == theirs > 1_000_000


def test_the_command_is_registered_under_bench():
    from clipray.bench import load_benchmarks

    assert "peer" in load_benchmarks()
    out = subprocess.run([sys.executable, "-m", "clipray", "bench", "peer", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--data {synth,digits}" in out.stdout
