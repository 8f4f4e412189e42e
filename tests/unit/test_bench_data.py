"""`clipray bench data` pieces that need no Ray: data, tight loop, DataLoader baseline, CPU accounting."""

from __future__ import annotations

import argparse

from clipray.bench.data import bench_config, dataloader, make_photos, tight_loop


def test_bench_pieces_agree_on_rows(tmp_path):
    make_photos(24, 2, (96, 64), tmp_path)
    args = argparse.Namespace(cpus=1, jpeg_decoder="simplejpeg", image_size=32)
    cfg = bench_config(str(tmp_path), args)
    files = sorted(str(p) for p in tmp_path.glob("*.parquet"))
    tl = tight_loop(cfg, files)
    dl = dataloader(cfg, files, workers=0)
    ops = dataloader(cfg, files, workers=0, recipe="clipray_ops")
    assert tl["rows"] == dl["rows"] == ops["rows"] == 24  # distinct photos: no row is dropped as a duplicate
    assert tl["cpu_s"] > 0 and tl["rows_per_cpu_s"] > 0 and dl["rows_per_s"] > 0


def test_marginal_cost_cancels_fixed_cost():
    # 2 CPU-s of start-up in both runs, then 0.01 CPU-s per row: the marginal rate is 100 rows per
    # CPU-second and the fixed cost comes back as 2 CPU-s.
    from clipray.bench.data import _figures, marginal

    big, small = _figures(3000, 14.0, 32.0), _figures(1000, 6.0, 12.0)
    m = marginal(big, small)
    assert abs(m["rows_per_cpu_s"] - 100.0) < 1e-9 and abs(m["fixed_cpu_s"] - 2.0) < 1e-9
    assert abs(m["rows_per_s"] - 250.0) < 1e-9 and abs(m["fixed_wall_s"] - 2.0) < 1e-9
    assert marginal(small, big) == {}  # the "big" run must be the bigger one


def test_dataloader_recipes_yield_model_inputs(tmp_path):
    # The plain recipe normalises float32 CHW in the loader and tokenizes with open_clip's
    # reference; clipray's ops keep uint8 HWC and its own tokenizer. Both give the same token ids.
    import torch

    from clipray.bench.data import _ParquetRows

    make_photos(4, 1, (96, 64), tmp_path)
    args = argparse.Namespace(cpus=1, jpeg_decoder="simplejpeg", image_size=32)
    cfg = bench_config(str(tmp_path), args)
    files = sorted(str(p) for p in tmp_path.glob("*.parquet"))
    plain, ops = _ParquetRows(files, cfg, "plain")[1], _ParquetRows(files, cfg, "clipray_ops")[1]
    assert plain["image"].dtype == torch.float32 and tuple(plain["image"].shape) == (3, 32, 32)
    assert abs(float(plain["image"].mean())) < 3  # normalised, not 0..255
    assert ops["image"].dtype.name == "uint8" and ops["image"].shape == (32, 32, 3)
    assert [int(t) for t in plain["tokens"]] == [int(t) for t in ops["tokens"]]
