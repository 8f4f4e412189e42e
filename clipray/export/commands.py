"""`clipray export`: registered by the export group (it finds models through `clipray.eval.loading`,
so it sits above `models`)."""

from __future__ import annotations

import argparse
import sys

from clipray.commandline import Subparsers


def register(sub: Subparsers) -> None:
    from clipray.models.clip.export import FORMATS

    p = sub.add_parser("export", help="write a trained CLIP in OpenAI / open_clip layout (open_clip loads the folder)")
    p.add_argument("model", metavar="RUN_ID|CHECKPOINT|models:/NAME/VERSION",
                   help="MLflow run id (or runs:/<id>) of a training run, a checkpoint directory, or a "
                        "registered version (models:/NAME/VERSION, models:/NAME@ALIAS)")
    p.add_argument("--format", choices=FORMATS, required=True,
                   help="open_clip: open_clip_config.json + weights (open_clip.create_model('local-dir:OUT')); "
                        "openai: one OpenAI-layout state dict (model.pt)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from clipray.export import export_model
    from clipray.models.clip.export import ExportError

    try:
        result = export_model(args.model, args.format, args.out, tracking_uri=args.tracking_uri)
    except ExportError as e:  # a user error, said with the model it concerns
        raise ExportError(f"cannot export {args.model}: {e}") from None
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {', '.join(result.files)} (step {result.step}) to {result.out}")
    if result.format == "open_clip":
        print(f"load it: open_clip.create_model_and_transforms('local-dir:{result.out}'); "
              f"open_clip.get_tokenizer('local-dir:{result.out}')")
    else:
        print(f"load it: open_clip.load_openai_model('{result.out / result.files[0]}', precision='fp32')")
    return 0
