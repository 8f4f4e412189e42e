"""The tiny pipelines every end-to-end test runs, as `clipray` arguments: one place says which
pipeline, data, run storage, evaluation and model logging a test's run uses."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = ROOT / "pipelines" / "tiny"
TINY = PIPELINES / "clip-tiny.yaml"  # the smallest CLIP that exercises every stage


def sets(*settings: str) -> list[str]:
    """`--set` arguments for `key=value` settings."""
    return [arg for setting in settings for arg in ("--set", setting)]


def tiny_run(*settings: str, data: Path | str, runs: Path | str, pipeline: Path | str = TINY,
             command: str = "train", zeroshot: Path | str | None = None, log_model: bool = False) -> list[str]:
    """Arguments for `clipray <command> <pipeline>` on `data` (a dataset folder with train/, or any
    source URI), checkpoints under `runs`, and then `settings` (which win).

    Zero-shot evaluation runs only when a test names its `zeroshot` folder, and the model is logged
    to MLflow only when it asks (`log_model`): most tests check neither, and both cost seconds a run.
    """
    source = data / "train" if isinstance(data, Path) else data
    return [command, str(pipeline if Path(pipeline).is_absolute() else ROOT / pipeline),
            *sets(f"data.source={source}", f"train.storage_path={runs}",
                  f"eval.zeroshot_source={zeroshot if zeroshot is not None else 'null'}",
                  f"tracking.log_model={'true' if log_model else 'false'}", *settings)]
