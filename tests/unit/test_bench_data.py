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
