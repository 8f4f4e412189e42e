from pathlib import Path

import pytest

from clipray.config import ConfigError, load_config
from clipray.models import build_model

ROOT = Path(__file__).resolve().parents[2]


def test_unknown_key_names_key_and_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config(data={"name": "x", "train": {"stepz": 3}})
    msg = str(e.value)
    assert "train.stepz" in msg and "did you mean 'steps'" in msg and "global_batch_size" in msg


def test_unknown_top_level_section():
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        load_config(data={"name": "x", "trian": {}})


def test_set_overrides_parse_yaml_values():
    cfg = load_config(data={"name": "x"}, overrides=["train.steps=7", "optim.betas=[0.9, 0.95]",
                                                     "model.text.attn=bidirectional", "train.grad_clip=null"])
    assert cfg.train.steps == 7 and cfg.optim.betas == (0.9, 0.95)
    assert cfg.model.text.attn == "bidirectional" and cfg.train.grad_clip is None


@pytest.mark.parametrize("override, fragment", [
    ("train.steps=abc", "train.steps must be an integer"),
    ("text.kind=letters", "text.kind must be one of"),
    ("train.global_batch_size=7", "divisible"),
    ("model.vision.patch_size=30", "multiple of patch_size"),
    ("model.text.pool=first", "makes no sense"),
    ("steps", "key=value"),
])
def test_bad_values_are_clear(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(data={"name": "x"}, overrides=[override])


def test_name_defaults_to_file_stem(tmp_path):
    p = tmp_path / "my-run.yaml"
    p.write_text("train: {steps: 3}\n")
    assert load_config(p).name == "my-run"


@pytest.mark.parametrize("path", sorted((ROOT / "pipelines").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_pipeline_parses_and_builds(path):
    cfg = load_config(path)
    if cfg.model.vision.width * cfg.model.vision.layers <= 768 * 12:  # build the small ones here
        model = build_model(cfg.model)
        assert sum(p.numel() for p in model.parameters()) > 0
