"""Curation ops: metadata predicates (`data.where`) and caption language (`data.languages`).

Both are ordinary ops of the preprocessing chain (same interface, same drop accounting), so they
run in `clipray train` as well as in `clipray data curate`; the pipeline puts them at the front
of `data.ops` when they are configured and not listed (`clipray.data.pipeline.op_names`).
"""

from __future__ import annotations

import ast
import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipray.data.ops.base import Batch, DropStats, drop_where, op_registry
from clipray.errors import InvalidInputError

# Longest operators first, so that `<=` is not read as `<`.
_OPS = {"<=": "le", ">=": "ge", "==": "eq", "!=": "ne", "<": "lt", ">": "gt", "not in": "not_in", "in": "in"}
_PREDICATE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(<=|>=|==|!=|<|>|\bnot\s+in\b|\bin\b)\s*(.+?)\s*$")


class PredicateError(InvalidInputError):
    """A `data.where` entry that cannot be parsed, or does not fit the data's schema."""


@dataclass(frozen=True)
class Predicate:
    """`column op literal`: keeps the rows where it holds (a null value never holds)."""

    text: str
    column: str
    op: str  # one of the keys of _OPS, `not in` normalised to one space
    value: Any  # a number, a string, or (for in / not in) a tuple of them

    @property
    def reason(self) -> str:
        """Drop reason of this predicate, within MLflow's metric-name alphabet:
        `punsafe < 0.5` -> `where_punsafe_lt_0.5`."""
        value = ",".join(map(str, self.value)) if isinstance(self.value, tuple) else str(self.value)
        return re.sub(r"[^\w.\-]+", "_", f"where_{self.column}_{_OPS[self.op]}_{value}")

    @property
    def kind(self) -> str:
        """`number` or `string`: the column type the literal needs."""
        values = self.value if isinstance(self.value, tuple) else (self.value,)
        return "string" if isinstance(values[0], str) else "number"

    def mask(self, column: Any) -> np.ndarray:
        """True where the predicate holds, over one column of a batch (numpy array or list)."""
        values = np.asarray(column, dtype=object) if not isinstance(column, np.ndarray) else column
        n = len(values)
        if self.kind == "number":
            if values.dtype == object:
                valid = np.array([v is not None and not isinstance(v, str | bytes) for v in values], dtype=bool)
                nums = np.array([float(v) if ok else np.nan for v, ok in zip(values, valid)], dtype=np.float64)
            else:
                nums = values.astype(np.float64)
                valid = ~np.isnan(nums)
            if self.op in ("in", "not in"):
                hit = np.isin(nums, np.array(self.value, dtype=np.float64))
                out = hit if self.op == "in" else ~hit
            else:
                with np.errstate(invalid="ignore"):
                    out = _compare(nums, self.op, float(self.value))
            return out & valid
        strs = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]
        valid = np.array([isinstance(v, str) for v in strs], dtype=bool)
        if self.op in ("in", "not in"):
            wanted = set(self.value)
            hit = np.array([v in wanted for v in strs], dtype=bool)
            return (hit if self.op == "in" else ~hit) & valid
        out = np.zeros(n, dtype=bool)
        idx = np.flatnonzero(valid)
        if len(idx):
            out[idx] = _compare(np.array([strs[i] for i in idx], dtype=object), self.op, self.value)
        return out


def _compare(values: np.ndarray, op: str, literal: Any) -> np.ndarray:
    if op == "<":
        return np.asarray(values < literal, dtype=bool)
    if op == "<=":
        return np.asarray(values <= literal, dtype=bool)
    if op == ">":
        return np.asarray(values > literal, dtype=bool)
    if op == ">=":
        return np.asarray(values >= literal, dtype=bool)
    if op == "==":
        return np.asarray(values == literal, dtype=bool)
    return np.asarray(values != literal, dtype=bool)


def _literal(text: str, where: str) -> Any:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if re.fullmatch(r"[\w.\-/:]+", text):
            return text  # a bare word is a string: `lang == en`
        raise PredicateError(f"data.where {where!r}: cannot read the value {text!r} (a number, a quoted "
                             f"string, or a [list] for in / not in)") from None
    if isinstance(value, bool):
        return int(value)
    return value


def parse_predicate(text: str) -> Predicate:
    """`"punsafe < 0.5"`, `"similarity >= 0.28"`, `"lang in ['en', 'de']"`, `"source != 'x'"`."""
    m = _PREDICATE.match(text)
    if not m:
        raise PredicateError(f"data.where {text!r}: expected `column op value` with op one of "
                             f"{', '.join(_OPS)} (e.g. 'punsafe < 0.5')")
    column, op, raw = m.group(1), " ".join(m.group(2).split()), m.group(3)
    value = _literal(raw, text)
    if op in ("in", "not in"):
        if not isinstance(value, list | tuple | set) or not value:
            raise PredicateError(f"data.where {text!r}: `{op}` takes a non-empty list, e.g. ['en', 'de']")
        items = tuple(value)
        if not (all(isinstance(v, str) for v in items) or all(_is_number(v) for v in items)):
            raise PredicateError(f"data.where {text!r}: the list mixes strings and numbers")
        return Predicate(text, column, op, items)
    if not (isinstance(value, str) or _is_number(value)):
        raise PredicateError(f"data.where {text!r}: the value must be a number or a string, got {raw!r}")
    if isinstance(value, str) and op not in ("==", "!="):
        pass  # string order comparisons are allowed (lexicographic), e.g. dt >= '2026-01-01'
    return Predicate(text, column, op, value)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def parse_predicates(texts: Sequence[str]) -> list[Predicate]:
    return [parse_predicate(t) for t in texts]


def arrow_kind(type_: Any) -> str | None:
    """`number`, `string`, or None (a column no predicate can compare) for a pyarrow type."""
    import pyarrow as pa

    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    if pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_decimal(type_) \
            or pa.types.is_boolean(type_):
        return "number"
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return "string"
    return None


def check_schema(predicates: Sequence[Predicate], schema: Any, where: str,
                 partition_columns: Sequence[str] = ()) -> None:
    """Fail naming the file and the column: a predicate on a column `schema` (pyarrow) lacks, or
    whose type does not match the literal. Hive partition columns are strings."""
    names = list(schema.names)
    for p in predicates:
        if p.column in partition_columns:
            kind: str | None = "string"
        elif p.column in names:
            kind = arrow_kind(schema.field(p.column).type)
        else:
            close = difflib.get_close_matches(p.column, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (columns: {', '.join(names)})"
            raise PredicateError(f"{where}: data.where {p.text!r}: no column {p.column!r} in this file{hint}")
        if kind != p.kind:
            got = schema.field(p.column).type if p.column in names else "string"
            raise PredicateError(f"{where}: data.where {p.text!r}: column {p.column!r} is {got}, the value is a "
                                 f"{p.kind}")


class WhereFilter:
    """Keeps rows where every predicate holds; a failing row counts under the first predicate it
    fails (in the order of `data.where`), so the drops add up to the rows removed.

    The predicates are evaluated here rather than pushed into the parquet scan: a pushed-down
    filter removes rows before anything can count them, and the counts per predicate are part of
    the run's record. The op runs first in the chain, on the metadata columns, before any image
    is decoded; what pushdown would save is reading the image bytes of the rows it removes.
    """

    writes = ()

    def __init__(self, predicates: Sequence[str]) -> None:
        self.predicates = parse_predicates(predicates)
        self.reads = tuple(dict.fromkeys(p.column for p in self.predicates))

    def __call__(self, batch: Batch, stats: DropStats) -> Batch:
        for p in self.predicates:
            if len(next(iter(batch.values()), ())) == 0:
                break
            batch = drop_where(batch, ~p.mask(batch[p.column]), p.reason, stats)
        return batch


@op_registry.register("where")
def _where(config: Any, *, train: bool) -> WhereFilter:
    return WhereFilter(config.data.where)


class LanguageFilter:
    """Drops `language`: captions whose identified language is not in `languages` (ISO 639-1).

    py3langid's naive-Bayes model (97 languages) ships inside the package and loads once per
    actor (about a second); nothing is downloaded. Short captions are identified less reliably
    than sentences: a caption of one or two words may be kept or dropped wrongly, which is why
    the languages are a keep-list and the identification is logged by reason.
    """

    reads = ("caption",)
    writes = ()

    def __init__(self, languages: Sequence[str]) -> None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        self.languages = frozenset(languages)
        self.identifier = LanguageIdentifier.from_model_file(MODEL_FILE)
        unknown = sorted(self.languages - set(self.identifier.nb_classes))
        if unknown:
            raise InvalidInputError(f"data.languages: {unknown} are not languages the identifier knows "
                             f"(ISO 639-1 codes such as en, de, fr, zh)")

    def identify(self, captions: Sequence[Any]) -> list[str]:
        return [self.identifier.classify(c if isinstance(c, str) else "")[0] for c in captions]

    def __call__(self, batch: Batch, stats: DropStats) -> Batch:
        langs = self.identify(batch["caption"])
        bad = np.array([lang not in self.languages for lang in langs], dtype=bool)
        return drop_where(batch, bad, "language", stats)


@op_registry.register("language")
def _language(config: Any, *, train: bool) -> LanguageFilter:
    return LanguageFilter(config.data.languages)
