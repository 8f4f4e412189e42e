import json

import pyarrow.parquet as pq

from clipray.data.synth import CLASSES, write_synthetic


def test_layout_and_determinism(tmp_path):
    a = write_synthetic(tmp_path / "a", 40, shards=2, seed=3, eval_per_class=1)
    write_synthetic(tmp_path / "b", 40, shards=2, seed=3, eval_per_class=1)
    assert a["classes"] == len(CLASSES) >= 20
    ta, tb = pq.read_table(tmp_path / "a" / "train"), pq.read_table(tmp_path / "b" / "train")
    assert {"key", "caption", "jpg", "width", "height"} <= set(ta.column_names)
    assert ta.equals(tb)
    assert len(list((tmp_path / "a" / "train").glob("*.parquet"))) == 2
    meta = json.loads((tmp_path / "a" / "eval" / "classes.json").read_text())
    assert meta["classes"] == CLASSES and all("{}" in t for t in meta["templates"])
    ev = pq.read_table(tmp_path / "a" / "eval" / "part-00000.parquet")
    assert sorted(set(ev.column("label").to_pylist())) == list(range(len(CLASSES)))


def test_captions_name_what_is_drawn(tmp_path):
    write_synthetic(tmp_path, 200, shards=1, seed=0, eval_per_class=1)
    caps = pq.read_table(tmp_path / "train").column("caption").to_pylist()
    assert len(set(caps)) > 100  # varied wording
    assert all(any(c in cap for c in ("red", "green", "blue", "yellow", "purple", "orange")) for cap in caps)
