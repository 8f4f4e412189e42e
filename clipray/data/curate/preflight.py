"""Checks of the curation settings that run in the command's process, before Ray starts."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from clipray.data.sources import SCHEMA_CHECK_FILES, Source, SourceError

if TYPE_CHECKING:
    from clipray.config import PipelineConfig


class CurationError(SourceError):
    """A curation setting that does not fit the data (said in one line, before Ray starts)."""


def check_where(src: Source, where: Sequence[str], partition_columns: Sequence[str] = (),
                *, limit: int = SCHEMA_CHECK_FILES) -> None:
    """Every `data.where` predicate parses, and names a column of the right type in every file
    checked (the first `limit`, as for the required columns); the error names the file."""
    import pyarrow.parquet as pq

    from clipray.data.ops.curation import PredicateError, check_schema, parse_predicates

    try:
        predicates = parse_predicates(where)
    except PredicateError as e:
        raise CurationError(str(e)) from None

    def check(path: str) -> None:
        try:
            schema = pq.read_schema(path, filesystem=src.filesystem)
        except Exception as e:
            raise CurationError(f"{src.display(path)}: cannot read the parquet footer: {e}") from None
        check_schema(predicates, schema, src.display(path), partition_columns)

    with ThreadPoolExecutor(8) as pool:
        try:
            list(pool.map(check, src.files[:limit]))
        except PredicateError as e:
            raise CurationError(str(e)) from None


def dataset_wide_stages(config: PipelineConfig) -> list[str]:
    """The configured stages that need the whole dataset at once (so only `clipray data curate`
    runs them): near-duplicate removal, and decontamination against explicitly listed sets."""
    d = config.data
    stages = []
    if d.dedup == "near":
        stages.append("data.dedup=near")
    if isinstance(d.decontaminate, list) and d.decontaminate:
        stages.append("data.decontaminate")
    return stages


def refuse_dataset_wide(config: PipelineConfig) -> None:
    stages = dataset_wide_stages(config)
    if stages:
        raise CurationError(
            f"{' and '.join(stages)} compare every row with the whole dataset, which a training stream "
            f"cannot: curate first (`clipray data curate PIPELINE.yaml --out URI`), then train on the "
            f"curated output (data.source: URI) with data.dedup=exact and without data.decontaminate")
