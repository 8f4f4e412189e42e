"""The model loader (`clipray.eval.loading`): checkpoint directories, registered versions, and its errors."""

from pathlib import Path

import pytest
import torch

from clipray.config import load_config, to_dict
from clipray.eval.loading import load_model, resolve_model
from clipray.models import build_model
from clipray.models.checkpoint import write_state

TINY = {"name": "ckpt-test", "model": {"embed_dim": 16, "vision": {"image_size": 16, "patch_size": 8, "width": 16,
                                                                  "layers": 1, "heads": 2},
                                        "text": {"context_length": 8, "width": 16, "layers": 1, "heads": 2}}}


def test_checkpoint_directory_gives_config_step_and_weights(tmp_path: Path):
    config = load_config(data=TINY)
    model = build_model(config.model)
    write_state({"objective": {"model": model.state_dict()}, "config": to_dict(config), "step": 7}, str(tmp_path))
    source = resolve_model(str(tmp_path))
    assert source.config.name == "ckpt-test" and source.step == 7 and source.run_id is None
    loaded = load_model(source)
    assert not loaded.model.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    # Its inputs: the evaluation image ops (resize + centre crop to the model's size) and the tokenizer.
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 24), "red").save(buf, format="PNG")
    pixels = loaded.image_input([buf.getvalue()])
    assert pixels.shape == (1, 16, 16, 3) and pixels.dtype.name == "uint8" and (pixels[..., 0] > 200).all()
    assert loaded.text_input(["a red circle"]).shape == (1, 8)


def test_bad_model_references_name_the_cause(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"no state\.pt"):
        resolve_model(str(tmp_path))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(FileNotFoundError, match="models:/clip/1: not in the model registry"):
        resolve_model("models:/clip/1", tracking_uri=uri)
    with pytest.raises(FileNotFoundError, match="neither a checkpoint directory nor a run"):
        resolve_model("0123456789abcdef", tracking_uri=uri)


def test_eval_inputs_are_checked_before_the_model_is_looked_up(tmp_path: Path):
    from clipray.eval.run import evaluate

    # A run id that exists nowhere: the missing data must be what is reported, before any lookup.
    with pytest.raises(FileNotFoundError, match=f"no parquet files in the evaluation set {tmp_path / 'none'}"):
        evaluate("0123456789abcdef", str(tmp_path / "none"), tracking_uri="http://127.0.0.1:1", log=False)
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "part-0.parquet").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"classes\.json \(a JSON object .* --classes or eval\.classes_file"):
        evaluate("0123456789abcdef", str(tmp_path / "set"), tracking_uri="http://127.0.0.1:1", log=False)


def test_registered_version_loads_the_logged_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A version registered as `clipray train` registers it (pyfunc model with its `state.pt`) loads by
    `models:/NAME/VERSION` and `models:/NAME@ALIAS`, even when MLflow's default store is another."""
    import io

    import mlflow
    from mlflow.tracking import MlflowClient
    from PIL import Image

    from clipray.tracking import start_run
    from clipray.tracking.model import log_pyfunc_model
    from clipray.tracking.publish import register

    config = load_config(data=TINY)
    torch.manual_seed(0)
    model = build_model(config.model).eval()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), "red").save(buf, format="JPEG")
    before = mlflow.get_tracking_uri()
    try:
        run = start_run("registry", uri)
        model_uri = log_pyfunc_model(uri, run.run_id, config, model, 5, buf.getvalue(), "a red square")
        run.close("FINISHED")
        version = register(uri, model_uri, "ckpt-test")
        MlflowClient(tracking_uri=uri).set_registered_model_alias("ckpt-test", "champion", version)
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/other.db")  # the default store knows no such model
        for ref in (f"models:/ckpt-test/{version}", "models:/ckpt-test@champion"):
            loaded = load_model(ref, tracking_uri=uri)
            assert loaded.source.version == version and loaded.source.run_id == run.run_id and loaded.source.step == 5
            for key, value in model.state_dict().items():
                assert torch.equal(loaded.model.state_dict()[key], value), key
    finally:
        mlflow.set_tracking_uri(before)
