"""`clipray bench NAME`: one subcommand per registered benchmark (`clipray.bench.bench_registry`)."""

from __future__ import annotations

from clipray.commandline import Subparsers


def register(sub: Subparsers) -> None:
    from clipray.bench import load_benchmarks

    bench = sub.add_parser("bench", help="benchmarks: clipray beside a baseline, measured in one run")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    for name, b in load_benchmarks().items():
        p = bench_sub.add_parser(name, help=b.help)
        b.add_arguments(p)
        p.set_defaults(func=b.run)
