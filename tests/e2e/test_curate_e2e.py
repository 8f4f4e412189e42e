"""`clipray data curate` end to end on real clip art with planted copies (one run, shared).

Checked against references computed here, in-process, from the labels of the planted data:
- the counts add up (rows_in = rows_out + sum(dropped)) and match the rows written;
- `where` drops exactly the unsafe-flagged rows;
- `eval_overlap` drops exactly the rows whose signature is near an evaluation image, planted
  copies of evaluation images included;
- the banded Ray Data pass removes exactly the rows the all-pairs reference removes;
- the recall on planted copies and the rate of distinct images removed, printed and bounded
  at the levels measured on this data; the issue's bar (>= 98% of copies removed, <= 1% of
  distinct images removed) is asserted exactly by a strict xfail: it is not met on this data
  (docs/curation.md has the figures, and why);
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

from clipray.data.curate.near import (
    Thresholds,
    find_near_duplicates_local,
    grids,
    signature_of_bytes,
)
from clipray.data.curate.plant import planted_quality
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
    return (np.array([s[0] for s in sig], np.uint64), grids([s[1] for s in sig]),
            np.array([s[2] for s in sig], np.int64))


def _safe_rows_near_eval(curation_data):
    """The rows `data.where` keeps, their keys and signatures, and which of them are near an
    evaluation image (what curate drops as eval_overlap before the near-duplicate pass)."""
    src = _source(curation_data)
    unsafe = set(curation_data.unsafe)
    rows = src.filter(np.array([k not in unsafe for k in src.column("key").to_pylist()]))
    h, c, area = _signatures(rows)
    eh, ec, _ = _signatures(pq.read_table(f"{curation_data.eval}/part-00000.parquet"))
    near_eval = Thresholds().near_matrix(h, c, eh, ec).any(axis=1)
    return np.array(rows.column("key").to_pylist()), h, c, area, near_eval


def test_eval_overlap_drops_exactly_the_rows_near_an_evaluation_image(curated, curation_data):
    keys, _, _, _, near_eval = _safe_rows_near_eval(curation_data)
    assert curated["summary"]["dropped"]["eval_overlap"] == int(near_eval.sum())
    assert not set(keys[near_eval]) & set(curated["table"].column("key").to_pylist())
    caught = sum(k in set(keys[near_eval]) for k in curation_data.eval_copies)
    print(f"planted copies of evaluation images removed: {caught} / {len(curation_data.eval_copies)}")
    assert caught >= 0.75 * len(curation_data.eval_copies)


@pytest.fixture(scope="module")
def near_quality(curated, curation_data):
    """The near-duplicate pass against its references and the planted labels (computed once)."""
    all_keys, h, c, area, near_eval = _safe_rows_near_eval(curation_data)
    clean = ~near_eval
    keys = all_keys[clean]
    ref = find_near_duplicates_local(list(keys), h[clean], c[clean], area[clean], Thresholds(), bands=8)
    every_pair = find_near_duplicates_local(list(keys), h[clean], c[clean], area[clean], Thresholds())
    out = set(curated["table"].column("key").to_pylist())
    unsafe, kept_keys = set(curation_data.unsafe), set(keys)
    distinct = [k for k in curation_data.originals
                if k not in curation_data.groups and k not in unsafe and k in kept_keys]
    # the package's generated star polygons (shapes/stars): at 128 px, rings that differ in sub-pixel lines
    src = _source(curation_data)
    caption = dict(zip(src.column("key").to_pylist(), src.column("caption").to_pylist()))
    star = {k for k in [*distinct, *curation_data.groups] if "clip art of stars" in caption[k]}
    q = {"ref": ref, "keys": keys, "out": out,
         "all": planted_quality(curation_data.groups, distinct, out),
         "nonstar": planted_quality({o: cs for o, cs in curation_data.groups.items() if o not in star},
                                    [k for k in distinct if k not in star], out)}
    print(f"banding: {len(ref.dropped)} rows dropped, all-pairs comparison {len(every_pair.dropped)}; "
          f"{q['all'].line()}; outside the generated stars: {q['nonstar'].line()}")
    return q


def test_near_duplicates_banded_pass_equals_the_reference(curated, near_quality):
    q = near_quality
    assert curated["summary"]["dropped"]["near_duplicate"] == len(q["ref"].dropped)
    assert q["out"] == set(q["keys"]) - q["ref"].dropped  # the very rows of the reference, by the keep rule


def test_near_duplicates_planted_recall_and_distinct_removed_at_the_measured_levels(near_quality):
    """Regression bounds at the levels measured on this data (docs/curation.md)."""
    q, n = near_quality["all"], near_quality["nonstar"]
    assert q.removed / q.copies >= 0.95
    assert q.distinct_removed / q.distinct <= 0.20
    assert n.distinct_removed / n.distinct <= 0.03


@pytest.mark.xfail(strict=True, reason="not met on openclipart at 128 px: the generated star polygons and "
                   "card/icon series are closer to each other than planted copies are to their originals "
                   "(docs/curation.md, 'Measured quality')")
def test_near_duplicates_meet_the_issue_bar(near_quality):
    """Issue 23, Done when 1: >= 98% of planted copies removed, <= 1% of distinct images removed."""
    q = near_quality["all"]
    assert q.removed / q.copies >= 0.98
    assert q.distinct_removed / q.distinct <= 0.01


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
