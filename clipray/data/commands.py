"""`clipray synth`, `clipray realdata` and `clipray data profile` (`data curate`: clipray.curation.commands)."""

from __future__ import annotations

import argparse
import json

from clipray.commandline import Subparsers, add_pipeline_args, non_negative, positive


def register(sub: Subparsers) -> None:
    p = sub.add_parser("synth", help="write a synthetic image/alt-text dataset (img2dataset parquet layout)")
    p.add_argument("--out", required=True, help="output directory (train/ and eval/ are created in it)")
    p.add_argument("--rows", type=positive, required=True, help="training rows")
    p.add_argument("--shards", type=positive, default=4, help="parquet files for the training rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=positive, default=64, help="short side of the stored images is 1-1.5x this")
    p.add_argument("--eval-per-class", type=non_negative, default=20, help="evaluation images per class")
    p.add_argument("--bad-rows", type=non_negative, default=0,
                   help="rows broken on purpose (truncated JPEG, empty caption, null image)")
    p.set_defaults(func=cmd_synth)

    data = sub.add_parser("data", help="data-plane tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("profile", help="run only the data stages: rows in/out, drops by reason, rows/s")
    add_pipeline_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")
    p.add_argument("--limit", type=positive, default=None, help="stop after this many output rows")
    p.set_defaults(func=cmd_data_profile)
    # `clipray data curate` is added to this group by clipray.curation.commands (its driver sits above data/)

    p = sub.add_parser("realdata", help="write a set of real images shipped in a package (img2dataset layout + "
                                        "classes.json): train/ captions from labels, eval/ held out")
    p.add_argument("--set", dest="set_name", default="digits",
                   help="which set: digits (scikit-learn), openclipart (Debian openclipart-png)")
    p.add_argument("--out", required=True, help="output directory (train/ and eval/ are created in it)")
    p.add_argument("--image-size", type=positive, default=None,
                   help="stored image side in pixels (digits: 32; openclipart: longer side, 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-rows", type=positive, default=None,
                   help="openclipart: a seeded sample of this many images instead of all")
    p.set_defaults(func=cmd_realdata)


def cmd_synth(args: argparse.Namespace) -> int:
    from clipray.data.synth import write_synthetic

    info = write_synthetic(args.out, args.rows, shards=args.shards, seed=args.seed, image_size=args.image_size,
                           eval_per_class=args.eval_per_class, bad_rows=args.bad_rows)
    print(f"wrote {info['train_rows']} training rows ({info['bad_rows']} broken on purpose) in "
          f"{info['shards']} shards and {info['eval_rows']} evaluation images over {info['classes']} classes "
          f"to {info['path']}")
    return 0


def cmd_realdata(args: argparse.Namespace) -> int:
    from clipray.data.realsets import write_realset

    kwargs = {"image_size": args.image_size} if args.image_size is not None else {}
    if args.max_rows is not None:
        kwargs["max_rows"] = args.max_rows
    info = write_realset(args.set_name, args.out, seed=args.seed, **kwargs)
    print(f"wrote {info['set']}: {info['train_rows']} training rows and {info['eval_rows']} held-out evaluation "
          f"images over {info['classes']} classes to {info['path']}")
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
