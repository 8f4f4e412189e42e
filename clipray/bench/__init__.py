"""Benchmarks: `clipray bench NAME [args]`. Each prints clipray beside a baseline from the same run.

A benchmark module registers `add_arguments(parser)` and `run(args) -> int` under its name in
`bench_registry`; the CLI builds one subcommand per registered benchmark.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from clipray.registry import Registry


@dataclass(frozen=True)
class Benchmark:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# Modules listed here register themselves on import; the list is the set of benchmarks.
BENCH_MODULES = [
    "clipray.bench.data",
    "clipray.bench.text",
    "clipray.bench.loss",
    "clipray.bench.train",
    "clipray.bench.gpu",
    "clipray.bench.curate",
    "clipray.bench.peer",
]

bench_registry: Registry[Benchmark] = Registry("benchmark")


def load_benchmarks() -> dict[str, Benchmark]:
    import importlib

    for module in BENCH_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # a missing dependency inside an existing module is a real error
                raise
    return {name: bench_registry.get(name) for name in bench_registry.names()}
