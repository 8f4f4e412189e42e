"""`clipray export` round trip: open_clip 3.3.0 loads what it writes and embeds as clipray does.

A tiny CLIP is trained for two steps with the real training loop (into an MLflow run, as the
launcher records it); `clipray export` writes it from the run id (open_clip folder) and from the
checkpoint directory (OpenAI file). open_clip runs in the reference environment
(`make reference-env`: .refenv/, or $CLIPRAY_REFERENCE_PYTHON), in a subprocess, since clipray's
environment cannot import its torchvision (tests/support/open_clip_embed.py). Its embeddings of
the same PNG files and captions, through open_clip's own preprocessing and tokenizer, must equal
those of `predict_frame` (what clipray's logged pyfunc model serves).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from clipray.cli import main
from clipray.config import PipelineConfig, load_config, to_dict
from clipray.models.checkpoint import write_state
from clipray.models.clip.export import OPEN_CLIP_CONFIG, ExportError, check_exportable
from clipray.tracking.model import predict_frame
from clipray.train.context import LocalContext
from clipray.train.loop import train_loop

ROOT = Path(__file__).resolve().parents[2]
EMBED_SCRIPT = ROOT / "tests" / "support" / "open_clip_embed.py"
TOL = 1e-5
SIZE = 32
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)  # not OpenAI's: preprocess_cfg must carry the pipeline's
TEXTS = ["a photo of a cat", "a diagram", "Hello World!", "two dogs playing in the snow, 2026", ""]
TINY = {"name": "export-tiny", "text_encoding": {"tokenizer": "openai"}, "image": {"mean": list(MEAN), "std": list(STD)},
        "model": {"embed_dim": 32, "quick_gelu": True,
                  "vision": {"image_size": SIZE, "patch_size": 8, "width": 64, "layers": 1, "heads": 1},
                  "text": {"context_length": 16, "width": 64, "layers": 1, "heads": 1}},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "train": {"steps": 2, "global_batch_size": 8, "num_workers": 1, "checkpoint_every": 2, "log_every": 1}}


def tiny_config(*overrides: str) -> PipelineConfig:
    return load_config(data=copy.deepcopy(TINY), overrides=list(overrides))  # load_config edits its input


def reference_python() -> str:
    """open_clip's environment; a missing one fails under CI=1 (make test builds it) and skips elsewhere."""
    python = Path(os.environ.get("CLIPRAY_REFERENCE_PYTHON") or ROOT / ".refenv" / "bin" / "python")
    if not python.exists():
        message = (f"open_clip reference environment not found at {python}: run `make reference-env` "
                   f"(or set CLIPRAY_REFERENCE_PYTHON)")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return str(python)


def batches(epoch: int):
    g = torch.Generator().manual_seed(epoch)
    for _ in range(2):
        yield {"image": torch.randint(0, 256, (8, SIZE, SIZE, 3), generator=g, dtype=torch.uint8),
               "tokens": torch.randint(1, 49406, (8, 16), generator=g)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[PipelineConfig, Path, str, str]:
    """Two steps of the training loop, recorded in a local MLflow run as the launcher records one."""
    from mlflow.tracking import MlflowClient

    from clipray.eval.loading import CHECKPOINT_TAG
    from clipray.tracking import MlflowTracker
    from clipray.train.launcher import log_config

    tmp = tmp_path_factory.mktemp("export")
    config = tiny_config()
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("export", artifact_location=str(tmp / "art"))).info.run_id
    tracker = MlflowTracker(uri, run_id)
    log_config(tracker, config)
    ckpt = tmp / "ckpt"
    train_loop(config, LocalContext(batches, str(ckpt)), tracker)
    tracker.set_tags({CHECKPOINT_TAG: str(ckpt)})
    tracker.close()
    return config, ckpt, run_id, uri


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """PNG files already at the model's size (both sides' resize is then the identity), captions,
    and normalised pixel tensors."""
    tmp = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = tmp / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    np.save(tmp / "pixels.npy", rng.standard_normal((2, 3, SIZE, SIZE)).astype(np.float32))
    spec = {"images": paths, "texts": TEXTS, "pixels": str(tmp / "pixels.npy")}
    (tmp / "inputs.json").write_text(json.dumps(spec))
    return {**spec, "json": str(tmp / "inputs.json")}


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> tuple[PipelineConfig, Path]:
    """A ModifiedResNet-tower CLIP checkpoint with seeded weights (BatchNorm statistics included)."""
    from clipray.models import build_model
    from tests.support.seeded_weights import seeded_state_dict

    config = tiny_config("model.vision.kind=resnet", "model.vision.width=8", "model.vision.layers_per_stage=[1,1,1,1]",
                         "model.vision.heads=4")
    model = build_model(config.model)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict({k: torch.from_numpy(v) for k, v in seeded_state_dict(shapes, 3).items()})
    ckpt = tmp_path_factory.mktemp("rn") / "ckpt"
    ckpt.mkdir()
    write_state({"objective": {"model": model.state_dict()}, "config": to_dict(config), "step": 0}, str(ckpt))
    return config, ckpt


@pytest.fixture(scope="module")
def reference() -> str:
    return reference_python()


@pytest.fixture(scope="module")
def exported(reference, trained, resnet, inputs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both formats written by `clipray export` for both towers (the ViT folder from its run id, the
    rest from checkpoint directories) and open_clip's embeddings through each, from one reference
    process (starting it is most of the time)."""
    vit_config, vit_ckpt, run_id, uri = trained
    rn_config, rn_ckpt = resnet
    tmp = tmp_path_factory.mktemp("exported")
    out: dict[str, Any] = {}
    jobs = []
    for tower, ref, config, ckpt in (("vit", run_id, vit_config, vit_ckpt), ("rn", str(rn_ckpt), rn_config, rn_ckpt)):
        oc, oa = tmp / f"{tower}-oc", tmp / f"{tower}-oa"
        assert main(["export", ref, "--format", "open_clip", "--out", str(oc), "--tracking-uri", uri]) == 0
        assert main(["export", str(ckpt), "--format", "openai", "--out", str(oa)]) == 0
        jobs += [f"local-dir:{oc}={tmp / f'{tower}-oc.npz'}", f"openai:{oa / 'model.pt'}={tmp / f'{tower}-oa.npz'}"]
        out[tower] = {"config": config, "ckpt": ckpt, "open_clip_dir": oc}
    proc = subprocess.run([reference, str(EMBED_SCRIPT), str(inputs["json"]), *jobs], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for tower in ("vit", "rn"):
        for fmt in ("oc", "oa"):
            with np.load(tmp / f"{tower}-{fmt}.npz") as f:
                out[tower][fmt] = {k: f[k] for k in f.files}
    return out


def clipray_embeddings(config: PipelineConfig, ckpt: Path, inputs: dict[str, object]) -> dict[str, np.ndarray]:
    """What the logged pyfunc model returns (predict_frame over image bytes and texts)."""
    from clipray.eval.loading import load_model

    model = load_model(str(ckpt)).model
    images = [Path(p).read_bytes() for p in inputs["images"]]  # type: ignore[attr-defined]
    n, t = len(images), len(TEXTS)
    frame = pd.DataFrame({"image": images + [None] * t, "text": [None] * n + TEXTS})
    emb = predict_frame(model, config, frame)
    with torch.no_grad():
        pixels = torch.nn.functional.normalize(model.encode_image(torch.from_numpy(np.load(inputs["pixels"]))), dim=-1)
    return {"image": emb[:n], "text": emb[n:], "pixels": pixels.numpy()}


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())  # unit vectors: absolute = relative


@pytest.mark.parametrize("tower", ["vit", "rn"])
def test_open_clip_folder_loads_and_embeds_identically(exported, trained, inputs, tower):
    e = exported[tower]
    meta = json.loads((e["open_clip_dir"] / OPEN_CLIP_CONFIG).read_text())
    assert meta["preprocess_cfg"]["mean"] == list(MEAN) and meta["preprocess_cfg"]["std"] == list(STD)
    assert meta["preprocess_cfg"]["size"] == SIZE and meta["model_cfg"]["quick_gelu"] is True
    if tower == "vit":  # exported from its MLflow run id
        assert meta["clipray"]["run_id"] == trained[2] and meta["clipray"]["step"] == 2
    else:
        assert meta["model_cfg"]["vision_cfg"]["layers"] == [1, 1, 1, 1]
    ref, ours = e["oc"], clipray_embeddings(e["config"], e["ckpt"], inputs)
    from clipray.text import load_tokenizer

    assert np.array_equal(ref["ids"], load_tokenizer("openai", 16)(TEXTS))  # open_clip's tokenizer, same ids
    diffs = {k: max_diff(ours[k], ref[k]) for k in ("image", "text", "pixels")}
    print(f"{tower}: open_clip folder vs clipray: max |diff| {diffs}")
    assert max(diffs.values()) <= TOL, diffs
    for k in ("image", "text"):  # distinct inputs, distinct embeddings: nothing degenerate compared
        assert np.abs(ours[k] @ ours[k].T - np.eye(len(ours[k]))).max() > 1e-2


@pytest.mark.parametrize("tower", ["vit", "rn"])
def test_openai_file_loads_and_embeds_identically(exported, inputs, tower):
    e = exported[tower]
    ref, ours = e["oa"], clipray_embeddings(e["config"], e["ckpt"], inputs)
    # The OpenAI format has no preprocessing config (open_clip applies OpenAI's mean/std), so only
    # the model is compared on images: the same normalised pixels in, the same embeddings out.
    diffs = {k: max_diff(ours[k], ref[k]) for k in ("text", "pixels")}
    print(f"{tower}: OpenAI file vs clipray: max |diff| {diffs}")
    assert max(diffs.values()) <= TOL, diffs


@pytest.mark.parametrize("pipeline, family", [("pipelines/tiny/clippo-tiny.yaml", "clippo"),
                                              ("pipelines/tiny/albef-tiny.yaml", "albef")])
def test_clippo_and_albef_are_refused(tmp_path, capsys, pipeline, family):
    config = load_config(ROOT / pipeline)
    write_state({"objective": {"model": {}}, "config": to_dict(config), "step": 1}, str(tmp_path))
    assert main(["export", str(tmp_path), "--format", "open_clip", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"model.family={family}" in err and "no open_clip or OpenAI counterpart" in err
    assert not (tmp_path / "out").exists()


def test_what_open_clip_would_compute_differently_is_refused():
    base = tiny_config()
    check_exportable(base, "openai")
    for overrides, fmt, cause in [
        (["model.quick_gelu=false"], "openai", "quick_gelu is false"),
        (["model.vision.heads=2"], "openai", "not width // 64"),
        (["model.text.attn=bidirectional", "model.text.pool=first"], "open_clip", "attn=causal with pool=eot"),
    ]:
        with pytest.raises(ExportError, match=cause):
            check_exportable(tiny_config(*overrides), fmt)
    check_exportable(tiny_config("model.vision.heads=2", "model.quick_gelu=false"),
                     "open_clip")  # the folder's config describes them


def test_bad_references_name_the_cause(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--format", "open_clip", "--out", str(tmp_path / "o")]) == 2
    assert "no state.pt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path), "--format", "onnx", "--out", str(tmp_path / "o")])
