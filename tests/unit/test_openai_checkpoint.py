"""CLIP from OpenAI/open_clip-layout state dicts, checked against embeddings computed by open_clip.

The golden files in tests/data hold open_clip 3.3.0's image and text embeddings for weights and
inputs that `tests/support/seeded_weights.py` derives from a seed (the weights are not stored).
Regenerate them with `tests/support/make_openclip_golden.py` (its docstring says how: a separate
environment with open_clip + torchvision, because torchvision does not import beside this torch).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from clipray.errors import InvalidInputError
from clipray.models.clip import from_openai_state_dict
from clipray.models.clip.state_dict_adapter import load_init
from tests.support.seeded_weights import seeded_inputs, seeded_state_dict

DATA = Path(__file__).resolve().parents[1] / "data"


def golden(case: str) -> tuple[dict[str, torch.Tensor], np.lib.npyio.NpzFile]:
    g = np.load(DATA / f"openclip_golden_{case}.npz")
    shapes = {k: tuple(int(x) for x in s.split(",") if x) for k, s in zip(g["keys"], g["shapes"])}
    sd = {k: torch.from_numpy(v) for k, v in seeded_state_dict(shapes, int(g["seed"])).items()}
    return sd, g


def rel_err(a: torch.Tensor, b: np.ndarray) -> float:
    b_t = torch.from_numpy(b)
    return float((a - b_t).norm() / b_t.norm())


@pytest.mark.parametrize("case, kind", [("vitb32", "vit"), ("rn_tiny", "resnet")])
def test_embeddings_match_open_clip(case: str, kind: str):
    sd, g = golden(case)
    model = from_openai_state_dict(dict(sd))
    assert model.config.vision.kind == kind
    images, ids = seeded_inputs(int(g["seed"]), g["image_emb"].shape[0], model.config.vision.image_size,
                                77, 49408, tuple(int(n) for n in g["text_lengths"]))
    with torch.no_grad():
        img = model.encode_image(torch.from_numpy(images))
        txt = model.encode_text(torch.from_numpy(ids))
    assert rel_err(img, g["image_emb"]) < 1e-5
    assert rel_err(txt, g["text_emb"]) < 1e-5
    for i in range(len(ids)):  # per row too, so one good row cannot hide a bad one
        assert rel_err(txt[i], g["text_emb"][i]) < 1e-5


def test_vitb32_architecture_is_inferred_and_export_equals_input():
    sd, _ = golden("vitb32")
    model = from_openai_state_dict(dict(sd))
    v, t = model.config.vision, model.config.text
    assert (v.image_size, v.patch_size, v.width, v.layers, v.heads) == (224, 32, 768, 12, 12)
    assert (t.context_length, t.vocab_size, t.width, t.layers, t.heads, model.config.embed_dim) == (
        77, 49408, 512, 12, 8, 512)
    assert model.config.quick_gelu
    out = model.to_openai_state_dict()
    assert list(out) == list(sd) or set(out) == set(sd)
    for k, v in sd.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape and torch.equal(out[k], v), k
    assert sum(p.numel() for p in model.parameters()) == 151_277_313


def test_jit_extras_and_module_prefix_are_dropped(tmp_path: Path):
    sd, _ = golden("rn_tiny")
    noisy = {f"module.{k}": v for k, v in sd.items()}
    noisy.update(input_resolution=torch.tensor(64), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    model = from_openai_state_dict(noisy)
    assert model.config.vision.layers_per_stage == (1, 2, 1, 1)
    path = tmp_path / "rn.pt"
    torch.save(noisy, path)
    fresh = from_openai_state_dict(sd)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    load_init(fresh, str(path))
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in sd.items())


def test_init_from_s3(s3_server, monkeypatch):
    # model.init_from: s3://...: read through the S3 API, the endpoint from $AWS_ENDPOINT_URL.
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    sd, _ = golden("rn_tiny")
    buf = io.BytesIO()
    torch.save(sd, buf)
    bucket = s3_server.create_bucket("init-from")
    s3_server.client().put_object(Bucket=bucket, Key="models/rn.pt", Body=buf.getvalue())
    fresh = from_openai_state_dict(sd)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    load_init(fresh, f"s3://{bucket}/models/rn.pt")
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in sd.items())


def test_init_from_a_mismatching_file_names_it(tmp_path: Path):
    sd, _ = golden("rn_tiny")
    path = tmp_path / "rn.pt"
    torch.save(sd, path)
    from clipray.models.clip import CLIP
    from clipray.models.clip.presets import preset

    with pytest.raises(ValueError, match=r"rn\.pt does not fit"):
        load_init(CLIP(preset("tiny")), str(path))


def test_unknown_layout_is_a_clear_error():
    with pytest.raises(InvalidInputError, match="missing text_projection"):
        from_openai_state_dict({"foo": torch.zeros(1)})


def test_pipeline_init_from_loads_the_file_before_training(tmp_path: Path):
    from clipray.config import load_config
    from clipray.train.objectives import build_objective

    sd, _ = golden("rn_tiny")
    path = tmp_path / "openai-layout.pt"
    torch.save(sd, path)
    cfg = load_config(data={"name": "x", "model": {
        "embed_dim": 64, "vision": {"kind": "resnet", "image_size": 64, "width": 16, "heads": 8,
                                    "layers_per_stage": [1, 2, 1, 1]},
        "text": {"context_length": 77, "width": 128, "layers": 2, "heads": 2}, "init_from": str(path)}})
    objective = build_objective(cfg, rank=0, world_size=1, device=torch.device("cpu"))
    loaded = objective.module.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())
