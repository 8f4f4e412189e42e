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
    ("text_encoding.kind=letters", "text_encoding.kind must be one of"),
    ("train.global_batch_size=7", "divisible"),
    ("model.vision.patch_size=30", "multiple of patch_size"),
    ("model.text.pool=first", "makes no sense"),
    ("model.family=albef", "needs model.text.attn=bidirectional"),
    ("model.family=clippo", "text_encoding.kind=pixels"),
    ("model.albef.momentum=1.0", "momentum must be in"),
    ("steps", "key=value"),
    ("optim.lr=-0.001", "optim.lr must be positive, got -0.001"),
    ("optim.betas=[0.9, 1.0]", r"optim.betas must be two numbers in \[0, 1\)"),
    ("optim.min_lr_ratio=1.5", r"optim.min_lr_ratio must be in \[0, 1\]"),
    ("optim.warmup_steps=-1", "must not be negative"),
    ("model.embed_dim=0", "model.embed_dim must be positive, got 0"),
    ("model.vision.heads=0", "model.vision.heads must be positive, got 0"),
    ("model.text.layers=0", "model.text.layers must be positive, got 0"),
])
def test_bad_values_are_clear(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(data={"name": "x"}, overrides=[override])


@pytest.mark.parametrize("how", ["yaml", "set"])
def test_old_text_section_names_its_new_name(tmp_path, how):
    p = tmp_path / "old.yaml"
    p.write_text("text: {kind: tokens}\n" if how == "yaml" else "train: {steps: 3}\n")
    with pytest.raises(ConfigError) as info:
        load_config(p, overrides=["text.kind=pixels"] if how == "set" else [])
    message = str(info.value)
    assert "`text:` is now `text_encoding:`" in message and str(p) in message and "\n" not in message


def test_name_defaults_to_file_stem(tmp_path):
    p = tmp_path / "my-run.yaml"
    p.write_text("train: {steps: 3}\n")
    assert load_config(p).name == "my-run"


def _pipeline_configs(path):
    """A pipeline file's config, or each variant's config for a sweep file."""
    from clipray.train.sweep import is_sweep_file, variant_configs

    if is_sweep_file(path):
        return list(variant_configs(path)[1].values())
    return [load_config(path)]


@pytest.mark.parametrize("path", sorted((ROOT / "pipelines").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_pipeline_parses_and_builds(path):
    import torch

    for cfg in _pipeline_configs(path):
        small = cfg.model.vision.width * cfg.model.vision.layers <= 768 * 12 and cfg.model.vision.width <= 256
        if small:  # build the small ones for real, the published sizes on the meta device (no memory)
            model = build_model(cfg.model)
        else:
            with torch.device("meta"):
                model = build_model(cfg.model)
        assert sum(p.numel() for p in model.parameters()) > 0


def test_shipped_pipelines_cover_every_family_and_tower():
    configs = [c for p in sorted((ROOT / "pipelines").rglob("*.yaml")) for c in _pipeline_configs(p)]
    assert {c.model.family for c in configs} >= {"clip", "clippo", "albef"}
    assert {c.model.vision.kind for c in configs if c.model.family == "clip"} == {"vit", "resnet"}
    tiny = [load_config(p) for p in sorted((ROOT / "pipelines/tiny").glob("*.yaml")) if "ablation" not in p.name]
    assert {c.model.family for c in tiny} >= {"clip", "clippo", "albef"}
    assert all(c.train.num_workers == 2 and not c.train.use_gpu for c in tiny)


def test_causal_mean_pooling_warns():
    with pytest.warns(UserWarning, match="prefix-weighted"):
        load_config(data={"name": "x"}, overrides=["model.text.pool=mean"])


def test_resnet_tower_config():
    cfg = load_config(data={"name": "x"}, overrides=["model.vision.kind=resnet", "model.vision.image_size=64",
                                                     "model.vision.width=8", "model.vision.heads=2",
                                                     "model.vision.layers_per_stage=[1, 1, 1, 1]"])
    assert cfg.model.vision.layers_per_stage == (1, 1, 1, 1)
    with pytest.raises(ConfigError, match="4 positive block counts"):
        load_config(data={"name": "x"}, overrides=["model.vision.kind=resnet", "model.vision.layers_per_stage=[1, 1]"])
    with pytest.raises(ConfigError, match="multiple of 32"):
        load_config(data={"name": "x"}, overrides=["model.vision.kind=resnet", "model.vision.image_size=48"])


def test_sweep_variant_errors_name_the_variant(tmp_path):
    from clipray.train.sweep import variant_configs

    p = tmp_path / "s.yaml"
    p.write_text(f"pipeline: {ROOT / 'pipelines/tiny/clip-tiny.yaml'}\n"
                 "variants:\n  bad: {model.text.attn: causal, model.text.pool: first}\n")
    with pytest.raises(ConfigError, match=r"variant 'bad'.*makes no sense"):
        variant_configs(p)


def test_exponent_numbers_without_a_dot_are_numbers(tmp_path):
    # YAML 1.1 reads 5e-4 as a string; a learning rate is most often written that way.
    path = tmp_path / "p.yaml"
    path.write_text("name: x\noptim: {lr: 5e-4, eps: 1E-8}\n")
    config = load_config(path, ["train.steps=2e3", "optim.min_lr_ratio=1e-1"])
    assert (config.optim.lr, config.optim.eps, config.train.steps, config.optim.min_lr_ratio) == (5e-4, 1e-8, 2000, 0.1)
    assert isinstance(config.train.steps, int)
    with pytest.raises(ConfigError, match=r"train\.steps must be an integer, got 0\.5"):
        load_config(path, ["train.steps=5e-1"])


def test_overrides_leave_the_callers_dict_alone():
    data = {"name": "x", "train": {"steps": 7}}
    config = load_config(data=data, overrides=["train.steps=9"])
    assert config.train.steps == 9 and data == {"name": "x", "train": {"steps": 7}}
