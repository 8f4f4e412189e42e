"""CLIP-score filter in-process: the model named by a checkpoint directory or a registered-model
alias is loaded; rows below data.min_clip_score are dropped as low_clip_score, counted, and the
score column is written."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from clipray.config import load_config, to_dict
from clipray.curation.score import model_encoder, resolve_score_model
from clipray.data.curate.score import SCORE_COLUMN, ClipScorer
from clipray.data.stats import PipelineStats
from clipray.models import build_model
from clipray.models.checkpoint import STATE_FILE

CFG = {"name": "score", "model": {"embed_dim": 16, "vision": {"image_size": 32, "patch_size": 8, "width": 32,
                                                                "layers": 1, "heads": 2},
                                  "text": {"context_length": 16, "width": 32, "layers": 1, "heads": 2}},
       "text_encoding": {"tokenizer": "words"}}


def _jpg(colour):
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), colour).save(buf, format="JPEG")
    return buf.getvalue()


def test_scorer_drops_exactly_the_rows_below_the_threshold(tmp_path):
    config = load_config(data=CFG)
    torch.manual_seed(0)
    model = build_model(config.model)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save({"config": to_dict(config), "objective": {"model": model.state_dict()}, "step": 3}, ckpt / STATE_FILE)
    source = resolve_score_model(str(ckpt))
    assert source.checkpoint == str(ckpt.resolve())
    table = pa.table({"key": [f"k{i}" for i in range(8)],
                      "caption": ["a red square", "a blue square", "green", "a dog", "a cat", "red", "blue", "x"],
                      "jpg": pa.array([_jpg((i * 30, 255 - i * 30, 90)) for i in range(8)], pa.binary())})
    encoder = model_encoder(to_dict(source.config), source.state["objective"]["model"])
    keep_all = ClipScorer(encoder, None, None, "jpg", "caption")
    scores = keep_all(table).column(SCORE_COLUMN).to_numpy()
    assert np.all(np.abs(scores) <= 1.0 + 1e-5) and len(set(np.round(scores, 6))) > 1
    threshold = float(np.median(scores))
    stats = PipelineStats()
    scorer = ClipScorer(encoder, threshold, stats, "jpg", "caption")
    out = scorer(table)
    assert out.column("key").to_pylist() == [k for k, s in zip(table.column("key").to_pylist(), scores) if s >= threshold]
    assert stats.snapshot()["dropped"] == {"low_clip_score": int((scores < threshold).sum())}
    assert np.all(out.column(SCORE_COLUMN).to_numpy() >= threshold)


def test_registered_model_alias_resolves_through_the_model_loader(tmp_path, monkeypatch):
    import pytest
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(exp)
    client.create_registered_model("scorer")
    v = client.create_model_version("scorer", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.set_registered_model_alias("scorer", "champion", v.version)
    # the alias resolves to version 1, which holds no logged state.pt: the error names the setting
    with pytest.raises(FileNotFoundError, match=r"data\.score_model: .*version 1 holds no state\.pt"):
        resolve_score_model("models:/scorer@champion", uri)
    with pytest.raises(FileNotFoundError, match=r"data\.score_model: .*not in the model registry"):
        resolve_score_model("models:/nothing@champion", uri)
