"""Command line: parse -> load config -> call one function per command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _positive(text: str) -> int:
    """argparse type of counts and sizes: `--rows 0` is refused by the parser, naming the option."""
    return _int_at_least(text, 1, "a positive integer")


def _non_negative(text: str) -> int:
    return _int_at_least(text, 0, "an integer, 0 or more")


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return value


def _add_pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", help="pipeline YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted path; value parsed as YAML); repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipray", description="CLIP-family training on Ray, tracked in MLflow")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic image/alt-text dataset (img2dataset parquet layout)")
    p.add_argument("--out", required=True, help="output directory (train/ and eval/ are created in it)")
    p.add_argument("--rows", type=_positive, required=True, help="training rows")
    p.add_argument("--shards", type=_positive, default=4, help="parquet files for the training rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=_positive, default=64, help="short side of the stored images is 1-1.5x this")
    p.add_argument("--eval-per-class", type=_non_negative, default=20, help="evaluation images per class")
    p.add_argument("--bad-rows", type=_non_negative, default=0,
                   help="rows broken on purpose (truncated JPEG, empty caption, null image)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train a pipeline on Ray and log it to MLflow")
    _add_pipeline_args(p)
    _add_resume_arg(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="train the variants of a sweep file as MLflow child runs of one parent run")
    p.add_argument("sweep", help="sweep YAML (a base pipeline and its variants)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key in every variant; repeatable")
    p.set_defaults(func=cmd_sweep)

    data = sub.add_parser("data", help="data-plane tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("profile", help="run only the data stages: rows in/out, drops by reason, rows/s")
    _add_pipeline_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")
    p.add_argument("--limit", type=_positive, default=None, help="stop after this many output rows")
    p.set_defaults(func=cmd_data_profile)
    p = data.add_parser("curate", help="filter, de-duplicate and decontaminate data.source; write the kept rows "
                                       "(img2dataset parquet) and a manifest of drops by reason")
    _add_pipeline_args(p)
    p.add_argument("--out", required=True, help="output directory or s3:// URI")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object {"rows_in", "rows_out", "dropped", "out"} on stdout and nothing else')
    p.add_argument("--no-log", action="store_true", help="record no MLflow run")
    p.set_defaults(func=cmd_data_curate)

    tok = sub.add_parser("tokenizer", help="tokenizer tools").add_subparsers(dest="tokenizer_command", required=True)
    p = tok.add_parser("train", help="train a BPE vocabulary on a caption corpus (use it as text.tokenizer: PATH)")
    p.add_argument("--source", required=True, help="parquet file/directory/glob, or a text file with one caption per line")
    p.add_argument("--out", required=True, help="output tokenizer file (.json)")
    p.add_argument("--vocab-size", type=_positive, required=True, help="ids in the vocabulary, start/end-of-text included")
    p.add_argument("--column", default="caption", help="caption column of a parquet source")
    p.add_argument("--limit", type=_positive, default=None, help="use at most this many captions")
    p.add_argument("--min-frequency", type=_positive, default=2, help="merges seen fewer times are not learned")
    p.set_defaults(func=cmd_tokenizer_train)

    _add_jobs_commands(sub)
    _add_schedule_commands(sub)

    p = sub.add_parser("realdata", help="write a set of real images shipped in a package (img2dataset layout + "
                                        "classes.json): train/ captions from labels, eval/ held out")
    p.add_argument("--set", dest="set_name", default="digits",
                   help="which set: digits (scikit-learn), openclipart (Debian openclipart-png)")
    p.add_argument("--out", required=True, help="output directory (train/ and eval/ are created in it)")
    p.add_argument("--image-size", type=_positive, default=None,
                   help="stored image side in pixels (digits: 32; openclipart: longer side, 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-rows", type=_positive, default=None,
                   help="openclipart: a seeded sample of this many images instead of all")
    p.set_defaults(func=cmd_realdata)

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

    _add_export_command(sub)

    bench = sub.add_parser("bench", help="benchmarks: clipray beside a baseline, measured in one run")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    from clipray.bench import load_benchmarks

    for name, b in load_benchmarks().items():
        p = bench_sub.add_parser(name, help=b.help)
        b.add_arguments(p)
        p.set_defaults(func=b.run)
    return parser


def _add_jobs_commands(sub: argparse._SubParsersAction) -> None:
    from clipray.jobs import commands as jc

    p = sub.add_parser("submit", help="submit a pipeline to a Ray cluster through the Jobs API")
    _add_pipeline_args(p)
    jc.add_address(p)
    p.add_argument("--wait", action="store_true", help="stream the job's logs and exit with its outcome")
    p.add_argument("--submission-id", default=None, help="job id (a resubmitted id is refused by Ray)")
    _add_resume_arg(p)
    p.set_defaults(func=jc.cmd_submit)

    jobs = sub.add_parser("jobs", help="list, inspect, follow and stop Ray jobs").add_subparsers(
        dest="jobs_command", required=True)
    p = jobs.add_parser("list", help="recent jobs, newest first")
    jc.add_address(p)
    p.add_argument("--limit", type=_positive, default=20)
    p.set_defaults(func=jc.cmd_jobs_list)
    for name, func, text in [("status", jc.cmd_jobs_status, "a job's status and message"),
                             ("logs", jc.cmd_jobs_logs, "a job's logs"),
                             ("stop", jc.cmd_jobs_stop, "stop a running job")]:
        p = jobs.add_parser(name, help=text)
        p.add_argument("job_id")
        jc.add_address(p)
        if name == "logs":
            p.add_argument("--follow", action="store_true", help="stream until the job ends; exit with its outcome")
        p.set_defaults(func=func)


def _add_schedule_commands(sub: argparse._SubParsersAction) -> None:
    from clipray.jobs import commands as jc
    from clipray.schedule import commands as sc

    sched = sub.add_parser("schedule", help="recurring retraining schedules (cron)").add_subparsers(
        dest="schedule_command", required=True)
    p = sched.add_parser("add", help="add a schedule that retrains PIPELINE on a cluster")
    p.add_argument("name")
    _add_pipeline_args(p)
    p.add_argument("--cron", required=True, type=sc.cron_arg, help="cron expression (UTC), e.g. '0 3 * * *'")
    jc.add_address(p)
    p.add_argument("--max-retries", type=_non_negative, default=2, help="resubmissions of a failed window")
    p.add_argument("--start", default=None, help="count cron ticks from this ISO time (default: now)")
    sc.add_state(p)
    p.set_defaults(func=sc.cmd_schedule_add)
    p = sched.add_parser("list", help="schedules, next run and last submission")
    sc.add_state(p)
    p.set_defaults(func=sc.cmd_schedule_list)
    p = sched.add_parser("remove", help="remove a schedule")
    p.add_argument("name")
    sc.add_state(p)
    p.set_defaults(func=sc.cmd_schedule_remove)
    p = sched.add_parser("render", help="print a schedule as Kubernetes YAML (the pipeline as a ConfigMap, and the schedule)")
    p.add_argument("name")
    p.add_argument("--kind", choices=["RayCronJob", "CronJob"], default="RayCronJob")
    sc.add_state(p)
    p.set_defaults(func=sc.cmd_schedule_render)

    p = sub.add_parser("scheduler", help="run the scheduler service (submits due runs via the Jobs API)")
    sc.add_state(p)
    p.add_argument("--interval", type=float, default=30.0, help="seconds between checks")
    p.add_argument("--once", action="store_true", help="one check, then exit")
    p.add_argument("--now", default=None, help="with --once: act as if it were this ISO time")
    p.set_defaults(func=sc.cmd_scheduler)

    p = sub.add_parser("retrain", help="one retraining run: new partitions, warm start, register, champion")
    _add_pipeline_args(p)
    p.add_argument("--schedule", default="manual", help="schedule name recorded on the run")
    p.add_argument("--window", default=None, help="window id (idempotence key; default: this minute, UTC)")
    p.add_argument("--partition-key", default="dt", help="hive partition key under data.source")
    p.set_defaults(func=sc.cmd_retrain)

    p = sub.add_parser("runs", help="recent MLflow runs with key metrics and how to open them")
    p.add_argument("--experiment", default=None, help="only this experiment (default: all)")
    p.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else ./mlruns.db")
    p.add_argument("--limit", type=_positive, default=10)
    p.add_argument("--flush", default=None, metavar="DIR",
                   help="deliver the metric records a run left in its spool (after a tracking-server outage)")
    p.set_defaults(func=cmd_runs)


def _add_resume_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", default=None, metavar="RUN_ID",
                   help="continue this MLflow run (its driver was lost) from its latest committed checkpoint; "
                        "the pipeline must match the run's recorded config")


def cmd_runs(args: argparse.Namespace) -> int:
    from clipray.tracking import resolve_tracking_uri
    from clipray.tracking.runs import format_runs, recent_runs

    if args.flush:
        from clipray.tracking.spool import flush_directory

        for path, n in flush_directory(args.flush).items():
            print(f"delivered {n} record(s) from {path}")
        return 0

    print(format_runs(recent_runs(resolve_tracking_uri(args.tracking_uri), args.experiment, args.limit)))
    return 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="MLflow run id (or runs:/<id>) of a training run, a checkpoint directory, or a "
                        "registered version (models:/NAME/VERSION, models:/NAME@ALIAS)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--batch-size", type=_positive, default=256, help="rows per embedding batch")
    p.add_argument("--actors", type=_positive, default=1, help="embedding actors (each loads the model once)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per embedding actor")


def _embed_options(args: argparse.Namespace) -> object:
    from clipray.eval.embed import EmbedOptions

    return EmbedOptions(batch_size=args.batch_size, actors=args.actors, num_gpus=args.gpus_per_actor,
                        num_cpus=0 if args.gpus_per_actor else 1)


def cmd_realdata(args: argparse.Namespace) -> int:
    from clipray.data.realsets import write_realset

    kwargs = {"image_size": args.image_size} if args.image_size is not None else {}
    if args.max_rows is not None:
        kwargs["max_rows"] = args.max_rows
    info = write_realset(args.set_name, args.out, seed=args.seed, **kwargs)
    print(f"wrote {info['set']}: {info['train_rows']} training rows and {info['eval_rows']} held-out evaluation "
          f"images over {info['classes']} classes to {info['path']}")
    return 0


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


def cmd_synth(args: argparse.Namespace) -> int:
    from clipray.data.synth import write_synthetic

    info = write_synthetic(args.out, args.rows, shards=args.shards, seed=args.seed, image_size=args.image_size,
                           eval_per_class=args.eval_per_class, bad_rows=args.bad_rows)
    print(f"wrote {info['train_rows']} training rows ({info['bad_rows']} broken on purpose) in "
          f"{info['shards']} shards and {info['eval_rows']} evaluation images over {info['classes']} classes "
          f"to {info['path']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from clipray.config import load_config

    config = load_config(args.pipeline, args.overrides)  # fails before Ray starts
    from clipray.data.pipeline import check_tokenizer
    from clipray.train.launcher import train

    check_tokenizer(config)  # also in the launcher's preflight; here before an MLflow run is opened

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


def cmd_data_profile(args: argparse.Namespace) -> int:
    from clipray.config import load_config

    config = load_config(args.pipeline, args.overrides)
    from clipray.data.profile import profile

    report = profile(config, limit=args.limit, quiet=args.json)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"rows in {report['rows_in']}, rows out {report['rows_out']}, {report['rows_per_s']:.0f} rows/s "
              f"over {report['elapsed_s']:.1f} s")
        for reason, n in report["dropped"].items():
            print(f"  dropped {reason}: {n}")
    return 0


def cmd_data_curate(args: argparse.Namespace) -> int:
    from clipray.config import load_config

    config = load_config(args.pipeline, args.overrides)
    from clipray.data.curate.run import curate

    result = curate(config, args.out, quiet=args.json, log=not args.no_log)
    if args.json:
        print(json.dumps(result.summary()))
    else:
        print(f"rows in {result.rows_in}, rows out {result.rows_out} in {result.elapsed_s:.1f} s -> {result.out}")
        for reason, n in result.dropped.items():
            print(f"  dropped {reason}: {n}")
        if result.run_id:
            print(f"mlflow_run_id: {result.run_id}")
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from clipray.text.train_bpe import MIN_VOCAB_SIZE, train_and_save

    if args.vocab_size < MIN_VOCAB_SIZE:
        print(f"clipray: error: --vocab-size {args.vocab_size} is too small: the 256 byte symbols and the "
              f"start- and end-of-text tokens need at least {MIN_VOCAB_SIZE}", file=sys.stderr)
        return 2
    info = train_and_save(args.source, args.out, args.vocab_size, column=args.column, limit=args.limit,
                          min_frequency=args.min_frequency)
    print(f"trained a vocabulary of {info['vocab_size']} ids on {info['captions']} captions: {info['path']} "
          f"(use it with --set text.tokenizer={info['path']} and model.text.vocab_size >= {info['vocab_size']})")
    return 0


def _add_export_command(sub: argparse._SubParsersAction) -> None:
    from clipray.models.clip.export import FORMATS

    p = sub.add_parser("export", help="write a trained CLIP in OpenAI / open_clip layout (open_clip loads the folder)")
    p.add_argument("model", metavar="RUN_ID|CHECKPOINT",
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
    except ExportError as e:
        print(f"clipray: error: cannot export {args.model}: {e}", file=sys.stderr)
        return 2
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {', '.join(result.files)} (step {result.step}) to {result.out}")
    if result.format == "open_clip":
        print(f"load it: open_clip.create_model_and_transforms('local-dir:{result.out}'); "
              f"open_clip.get_tokenizer('local-dir:{result.out}')")
    else:
        print(f"load it: open_clip.load_openai_model('{result.out / result.files[0]}', precision='fp32')")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. A `UserError` (a setting, a file, a name the user can fix) is one line on
    stderr and exit code 2; anything else is a bug and keeps its traceback."""
    from clipray.data.sources import skip_known_log_lines
    from clipray.errors import UserError

    skip_known_log_lines()  # before anything imports ray

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"clipray: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
