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
    assert tl["rows"] == dl["rows"] == 24  # distinct photos: no row is dropped as a duplicate
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
