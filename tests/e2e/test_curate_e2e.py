"""`clipray data curate` end to end on real clip art with planted copies (one run, shared).

Checked against references computed here, in-process, from the labels of the planted data:
- the counts add up (rows_in = rows_out + sum(dropped)) and match the rows written;
- `where` drops exactly the unsafe-flagged rows;
- `eval_overlap` drops exactly the rows whose signature is near an evaluation image, planted
  copies of evaluation images included;
- the banded Ray Data pass removes exactly the rows the all-pairs reference removes;
- the recall on planted copies and the rate of distinct images removed, printed and bounded
  at the levels measured on this data (docs/curation.md has the figures and their limits);
- the MLflow run holds the counts and the picture of removed groups; a training run on the
  curated output logs its drops as data/curated/*.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from clipray.data.curate.near import Thresholds, find_near_duplicates_local, signature_of_bytes
from tests.conftest import ROOT, run_clipray
from tests.support.pipelines import tiny_run

pytestmark = pytest.mark.e2e
PIPELINE = str(ROOT / "pipelines" / "curate-openclipart.yaml")


@pytest.fixture(scope="module")
def curated(curation_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("curated")
    short = Path(os.path.join("/tmp", f"cr-cur-{os.getpid()}"))
    short.mkdir(exist_ok=True)
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db", TMPDIR=str(short),
               RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    out = tmp / "out"
    proc = run_clipray("data", "curate", PIPELINE, "--out", str(out), "--json",
                       "--set", f"data.source={curation_data.train}", "--set", f"eval.zeroshot_source={curation_data.eval}",
                       "--set", 'data.where=["punsafe < 0.5"]', env=env, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    files = sorted(glob.glob(str(out / "*.parquet")))
    table = pq.read_table(files)
    return {"summary": summary, "out": out, "table": table, "env": env, "tmp": tmp}


def _source(curation_data):
    return pq.read_table(sorted(glob.glob(f"{curation_data.train}/*.parquet")))


def test_counts_add_up_and_match_the_rows_written(curated, curation_data):
    s = curated["summary"]
    assert s["rows_in"] == _source(curation_data).num_rows
    assert s["rows_in"] == s["rows_out"] + sum(s["dropped"].values())
    assert curated["table"].num_rows == s["rows_out"]
    manifest = json.loads((curated["out"] / "curation.json").read_text())
    assert {k: manifest[k] for k in ("rows_in", "rows_out", "dropped")} == {k: s[k] for k in ("rows_in", "rows_out", "dropped")}
    # the same layout as the source: its columns, images as stored; no signature columns
    src = _source(curation_data)
    assert curated["table"].column_names == src.column_names
    kept = dict(zip(src.column("key").to_pylist(), src.column("jpg").to_pylist()))
    for key, data in zip(curated["table"].column("key").to_pylist()[:50], curated["table"].column("jpg").to_pylist()):
        assert data == kept[key]


def test_where_drops_exactly_the_unsafe_rows(curated, curation_data):
    assert curated["summary"]["dropped"]["where_punsafe_lt_0.5"] == len(curation_data.unsafe)
    assert not set(curation_data.unsafe) & set(curated["table"].column("key").to_pylist())


def _signatures(table):
    sig = [signature_of_bytes(b) for b in table.column("jpg").to_pylist()]
    return (np.array([s[0] for s in sig], np.uint64), np.array([s[1] for s in sig], np.uint64),
            np.array([s[2] for s in sig], np.int64))


def _safe_rows_near_eval(curation_data):
    """The rows `data.where` keeps, their keys and signatures, and which of them are near an
    evaluation image (what curate drops as eval_overlap before the near-duplicate pass)."""
    src = _source(curation_data)
    unsafe = set(curation_data.unsafe)
    rows = src.filter(np.array([k not in unsafe for k in src.column("key").to_pylist()]))
    h, c, area = _signatures(rows)
    eh, ec, _ = _signatures(pq.read_table(f"{curation_data.eval}/part-00000.parquet"))
    near_eval = Thresholds().near(h[:, None], c[:, None], eh[None, :], ec[None, :]).any(axis=1)
    return np.array(rows.column("key").to_pylist()), h, c, area, near_eval


def test_eval_overlap_drops_exactly_the_rows_near_an_evaluation_image(curated, curation_data):
    keys, _, _, _, near_eval = _safe_rows_near_eval(curation_data)
    assert curated["summary"]["dropped"]["eval_overlap"] == int(near_eval.sum())
    assert not set(keys[near_eval]) & set(curated["table"].column("key").to_pylist())
    caught = sum(k in set(keys[near_eval]) for k in curation_data.eval_copies)
    print(f"planted copies of evaluation images removed: {caught} / {len(curation_data.eval_copies)}")
    assert caught >= 0.75 * len(curation_data.eval_copies)


def test_near_duplicates_banded_pass_equals_all_pairs_reference_and_planted_recall(curated, curation_data):
    all_keys, h, c, area, near_eval = _safe_rows_near_eval(curation_data)
    clean = ~near_eval
    keys = all_keys[clean]
    ref = find_near_duplicates_local(list(keys), h[clean], c[clean], area[clean], Thresholds(), bands=8)
    out = set(curated["table"].column("key").to_pylist())
    assert curated["summary"]["dropped"]["near_duplicate"] == len(ref.dropped)
    assert out == set(keys) - ref.dropped  # the very rows of the reference, by the keep rule
    every_pair = find_near_duplicates_local(list(keys), h[clean], c[clean], area[clean], Thresholds())
    print(f"banding: {len(ref.dropped)} rows dropped, all-pairs comparison {len(every_pair.dropped)}")
    # quality on the planted groups (figures in docs/curation.md)
    groups = curation_data.groups
    copies = sum(len(v) for v in groups.values())
    left = [sum(k in out for k in [o, *cs]) for o, cs in groups.items()]
    # a group of 1 + c rows has c copies; rows left beyond one are copies not removed
    removed = sum(len(cs) - max(n - 1, 0) for (o, cs), n in zip(groups.items(), left))
    # a group with no row left lost its picture to a near-duplicate outside the group: the image
    # counts as a distinct image removed, like a removed original outside any group
    distinct = [k for k in curation_data.originals if k not in groups and k not in set(curation_data.unsafe) and k in set(keys)]
    distinct_removed = sum(k not in out for k in distinct) + sum(n == 0 for n in left)
    n_distinct = len(distinct) + len(groups)
    print(f"planted copies removed {removed}/{copies} ({removed / copies:.3f}); groups left with exactly one row "
          f"{sum(n == 1 for n in left)}/{len(groups)}, with none {sum(n == 0 for n in left)}; distinct images "
          f"removed {distinct_removed}/{n_distinct} ({distinct_removed / n_distinct:.3f})")
    assert removed / copies >= 0.85
    assert distinct_removed / n_distinct <= 0.25


def test_mlflow_run_has_counts_and_the_picture_of_removed_groups(curated):
    client = MlflowClient(tracking_uri=curated["env"]["MLFLOW_TRACKING_URI"])
    manifest = json.loads((curated["out"] / "curation.json").read_text())
    run = client.get_run(manifest["mlflow_run_id"])
    assert run.data.metrics["curate/rows_in"] == curated["summary"]["rows_in"]
    assert run.data.metrics["curate/dropped/near_duplicate"] == curated["summary"]["dropped"]["near_duplicate"]
    assert run.data.metrics["curate/rows_per_s"] > 0
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"curation.json", "near_duplicate_groups.png"} <= names


def test_training_on_curated_output_logs_the_curation_counts(curated, tmp_path):
    """`clipray train` reads the curated directory as data.source and records its drops."""
    env = dict(curated["env"], MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/train.db")
    proc = run_clipray(*tiny_run("data.dedup=exact", "data.decontaminate=false", "train.steps=2", "train.checkpoint_every=2",
                                 "data.concurrency=1", "data.num_cpus=0.25", "train.cpus_per_worker=0.25",
                                 pipeline=PIPELINE, data=str(curated["out"]), runs=tmp_path / "runs"),
                       env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = next(line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("mlflow_run_id:"))
    metrics = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"]).get_run(run_id).data.metrics
    assert metrics["data/curated/dropped/eval_overlap"] == curated["summary"]["dropped"]["eval_overlap"]
    assert metrics["data/curated/rows_out"] == curated["summary"]["rows_out"]
