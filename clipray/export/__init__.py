"""`clipray export`: the model of a run, checkpoint or registered version in open_clip / OpenAI layout.

The formats and what each can hold are in `clipray.models.clip.export`; this module finds the model
(`clipray.eval.loading`) and writes the files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from clipray.models.clip.export import (
    OPEN_CLIP_CONFIG,
    OPEN_CLIP_WEIGHTS,
    OPENAI_WEIGHTS,
    check_exportable,
    check_format,
    open_clip_model_cfg,
    open_clip_preprocess_cfg,
)


@dataclass
class ExportResult:
    out: Path
    format: str
    files: list[str]
    step: int
    run_id: str | None
    notes: list[str] = field(default_factory=list)


def export_model(ref: str, fmt: str, out: str | Path, tracking_uri: str | None = None) -> ExportResult:
    """Write the model of `ref` (a run id, `runs:/<id>`, a checkpoint directory or `models:/...`) to `out`."""
    import torch

    from clipray.eval.loading import load_model, resolve_model

    check_format(fmt)  # before the model is looked up
    source = resolve_model(ref, tracking_uri)
    config = source.config
    check_exportable(config, fmt)  # before the model is built
    weights = load_model(source).model.to_openai_state_dict()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    notes = []
    if config.text_encoding.tokenizer != "openai":
        notes.append(f"the model was trained on ids from text_encoding.tokenizer={config.text_encoding.tokenizer!r}; open_clip's "
                     f"tokenizer is OpenAI's BPE: tokenize with clipray's tokenizer to get the trained ids")
    if fmt == "openai":
        torch.save(weights, out / OPENAI_WEIGHTS)
        files = [OPENAI_WEIGHTS]
    else:
        torch.save(weights, out / OPEN_CLIP_WEIGHTS)
        meta = {"model_cfg": open_clip_model_cfg(config), "preprocess_cfg": open_clip_preprocess_cfg(config),
                # Not read by open_clip (it takes model_cfg and preprocess_cfg); where the weights came from.
                "clipray": {"source": ref, "run_id": source.run_id, "step": source.step,
                            "pipeline": config.name, "tokenizer": config.text_encoding.tokenizer}}
        (out / OPEN_CLIP_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
        files = [OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS]
    return ExportResult(out=out, format=fmt, files=files, step=source.step, run_id=source.run_id, notes=notes)
