"""`clipray data curate` is wired: the curation group adds it to the data group's parser."""

from __future__ import annotations

from clipray.cli import build_parser
from clipray.curation.commands import cmd_data_curate


def test_data_curate_parses_into_the_curation_command():
    args = build_parser().parse_args(["data", "curate", "p.yaml", "--out", "o", "--json", "--set", "data.dedup=near"])
    assert args.func is cmd_data_curate
    assert (args.pipeline, args.out, args.json, args.no_log, args.overrides) == ("p.yaml", "o", True, False,
                                                                                ["data.dedup=near"])
