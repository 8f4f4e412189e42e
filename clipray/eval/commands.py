"""`clipray eval` and `clipray embed`."""

from __future__ import annotations

import argparse
import json

from clipray.commandline import Subparsers, positive


def register(sub: Subparsers) -> None:
    p = sub.add_parser("eval", help="zero-shot, retrieval R@1/5/10 and modality gap of a trained model")
    _add_model_args(p)
    p.add_argument("--data", required=True, help="evaluation parquet (jpg, label, caption) with classes.json beside")
    p.add_argument("--classes", default=None, help="JSON {classes, templates}; default: classes.json beside --data")
    p.add_argument("--name", default=None, help="name of the set in metric keys (default from the --data path)")
    p.add_argument("--experiment", default="clipray-eval",
                   help="MLflow experiment for the new run when --model is a checkpoint directory")
    p.add_argument("--no-log", action="store_true", help="print only; log nothing to MLflow")
    p.add_argument("--json", action="store_true", help="also print the metrics as one JSON line")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("embed", help="image or text embeddings of a parquet dataset, written back to parquet")
    _add_model_args(p)
    p.add_argument("--data", required=True, help="input parquet directory, glob or s3:// URI")
    p.add_argument("--out", required=True, help="output directory for the embedding parquet files")
    p.add_argument("--modality", choices=("image", "text"), default="image")
    p.add_argument("--column", default=None, help="column to embed (default: the config's image/caption column)")
    p.add_argument("--keep", default="key", help="comma-separated columns copied to the output beside `embedding`")
    p.set_defaults(func=cmd_embed)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="MLflow run id (or runs:/<id>) of a training run, a checkpoint directory, or a "
                        "registered version (models:/NAME/VERSION, models:/NAME@ALIAS)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--batch-size", type=positive, default=256, help="rows per embedding batch")
    p.add_argument("--actors", type=positive, default=1, help="embedding actors (each loads the model once)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per embedding actor")


def _embed_options(args: argparse.Namespace) -> object:
    from clipray.eval.embed import EmbedOptions

    return EmbedOptions(batch_size=args.batch_size, actors=args.actors, num_gpus=args.gpus_per_actor,
                        num_cpus=0 if args.gpus_per_actor else 1)


def cmd_eval(args: argparse.Namespace) -> int:
    from clipray.eval.run import evaluate, format_table

    result = evaluate(args.model, args.data, classes_file=args.classes, name=args.name,
                      tracking_uri=args.tracking_uri, experiment=args.experiment, log=not args.no_log,
                      options=_embed_options(args))  # type: ignore[arg-type]
    print(format_table(result))
    if result.run_id:
        print(f"logged to MLflow run {result.run_id} ({result.tracking_uri}) as eval/{result.name}/*")
    if args.json:
        print(json.dumps(result.metrics))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from clipray.eval.run import embed

    keep = tuple(c for c in args.keep.split(",") if c)
    info = embed(args.model, args.data, args.out, modality=args.modality, column=args.column, keep=keep,
                 tracking_uri=args.tracking_uri, options=_embed_options(args))  # type: ignore[arg-type]
    print(f"wrote {info['rows']} {args.modality} embeddings (dim {info['dim']}) to {info['out']} "
          f"in {info['elapsed_s']:.1f} s")
    return 0
