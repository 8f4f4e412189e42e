"""`clipray train` and `clipray sweep`."""

from __future__ import annotations

import argparse

from clipray.commandline import Subparsers, add_pipeline_args, add_resume_arg


def register(sub: Subparsers) -> None:
    p = sub.add_parser("train", help="train a pipeline on Ray and log it to MLflow")
    add_pipeline_args(p)
    add_resume_arg(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="train the variants of a sweep file as MLflow child runs of one parent run")
    p.add_argument("sweep", help="sweep YAML (a base pipeline and its variants)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key in every variant; repeatable")
    p.set_defaults(func=cmd_sweep)


def cmd_train(args: argparse.Namespace) -> int:
    from clipray.config import load_config

    config = load_config(args.pipeline, args.overrides)  # fails before Ray starts
    from clipray.text.encoding import text_encoding
    from clipray.train.launcher import train

    text_encoding(config).check_vocabulary()  # also in the launcher's preflight; here before an MLflow run is opened

    result = train(config, resume=args.resume)
    dropped = ", ".join(f"{k} {v}" for k, v in result.data["dropped"].items()) or "none"
    print(f"data: {result.data['rows_in']} rows in, {result.data['rows_out']} out; dropped: {dropped}")
    top1 = result.metrics.get("eval/zeroshot_top1")
    if top1 is not None:
        n = int(result.metrics["eval/zeroshot_classes"])
        from clipray.eval.run import attribute_top1

        by = ", ".join(f"{name} {v:.2f}" for name, v in attribute_top1(result.metrics).items())
        print(f"zero-shot top-1: {top1:.2f} ({n} classes, chance {1 / n:.3f})" + (f"; top-1 by {by}" if by else ""))
    if result.model_version:
        print(f"model: {result.model_name} version {result.model_version} (mlflow.pyfunc.load_model("
              f"'models:/{result.model_name}/{result.model_version}'))")
    print(f"open the run: mlflow ui --backend-store-uri {result.tracking_uri}  "
          f"(then http://127.0.0.1:5000/#/experiments/ -> {result.experiment!r})")
    print(f"mlflow_run_id: {result.run_id}")
    print(f"mlflow_tracking_uri: {result.tracking_uri}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from clipray.train.sweep import run_sweep, variant_configs

    variant_configs(args.sweep, args.overrides)  # every variant validated before Ray starts
    result = run_sweep(args.sweep, args.overrides)
    for name, run_id in result.child_run_ids.items():
        top1 = result.metrics[name].get("eval/zeroshot_top1")
        print(f"variant {name}: run {run_id}" + (f", zero-shot top-1 {top1:.3f}" if top1 is not None else ""))
    print(f"mlflow_parent_run_id: {result.parent_run_id}")
    print(f"mlflow_tracking_uri: {result.tracking_uri}")
    return 0
