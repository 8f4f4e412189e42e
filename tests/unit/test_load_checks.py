"""Settings that used to load and then fail (or silently drift) in training are refused at load:
elastic worker ranges, gradient caching with a BatchNorm tower, a vocabulary too large for the
text tower (refused by `clipray train`, `data profile` and `submit` before Ray starts)."""

from __future__ import annotations

import itertools

import pytest

from clipray.config import ConfigError, load_config
from tests.conftest import ROOT

TINY = ROOT / "pipelines/tiny/clip-tiny.yaml"
RN_TINY = ROOT / "pipelines/tiny/clip-rn-tiny.yaml"


@pytest.mark.parametrize("workers, batch, micro, sizes", [
    ("[2, 4]", 16, 1, "3 workers"),
    ("[1, 8]", 24, 1, "5 and 7 workers"),
    ("[1, 8]", 8, 1, "3, 5, 6 and 7 workers"),
    ("[1, 4]", 12, 2, "4 workers"),  # 12 splits over 4 workers, but not into 2 micro-batches each
])
def test_every_world_size_of_an_elastic_range_is_checked(workers, batch, micro, sizes):
    with pytest.raises(ConfigError) as e:
        load_config(TINY, [f"train.num_workers={workers}", f"train.global_batch_size={batch}",
                           f"train.micro_batches={micro}"])
    assert str(e.value).endswith(f"is not at {sizes}"), e.value
    assert "\n" not in str(e.value)


def test_a_range_loads_exactly_when_every_size_in_it_can_train():
    """Whatever loads can restart at any size of its range: the per-worker batch is defined there."""
    for lo, hi, batch, micro in itertools.product(range(1, 6), range(1, 7), (6, 12, 16, 24, 30, 60), (1, 2)):
        if hi < lo:
            continue
        overrides = [f"train.num_workers=[{lo}, {hi}]", f"train.global_batch_size={batch}",
                     f"train.micro_batches={micro}"]
        fits = all(batch % (w * micro) == 0 for w in range(lo, hi + 1))
        try:
            tc = load_config(TINY, overrides).train
        except ConfigError:
            assert not fits, overrides
            continue
        assert fits, overrides
        assert all(tc.local_batch_size(w) * w == batch for w in range(lo, hi + 1))


def test_gradient_caching_with_a_batchnorm_tower_is_refused_naming_the_reason():
    with pytest.raises(ConfigError, match="BatchNorm layers normalise each micro-batch by its own statistics"):
        load_config(RN_TINY, ["train.micro_batches=2"])
    assert load_config(RN_TINY, ["train.micro_batches=1"]).model.vision.kind == "resnet"
    assert load_config(TINY, ["train.micro_batches=2"]).train.micro_batches == 2  # ViT: exact, allowed


def test_albef_step_settings_are_refused_at_load_not_in_the_workers():
    from tests.unit.test_text_padding import albef

    for override in ("train.micro_batches=2", "train.parallel=fsdp"):
        with pytest.raises(ConfigError, match=r"model\.family=albef trains with train\.micro_batches=1"):
            load_config(data=albef(), overrides=[override])


@pytest.mark.parametrize("command", ["train", "data profile", "submit"])
def test_too_large_vocabulary_refused_before_ray_starts(command, tiny_data, tmp_path, capsys, monkeypatch):
    import ray

    from clipray.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    args = [*command.split(), str(TINY), "--set", f"data.source={tiny_data / 'train'}",
            "--set", "text_encoding.tokenizer=openai", "--set", "model.text.vocab_size=32000"]
    if command == "submit":
        args += ["--address", "http://127.0.0.1:9"]  # never contacted: the pipeline is refused first
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "has 49408 ids but model.text.vocab_size is 32000" in err, err
    assert not ray.is_initialized()
