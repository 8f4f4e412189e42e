"""Metadata predicates (data.where) and caption language (data.languages): exact drops per reason
on a labelled table, refusal of bad predicates before Ray starts, training's refusal of the
dataset-wide stages."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipray.config import load_config
from clipray.data.curate.preflight import CurationError, check_where, refuse_dataset_wide
from clipray.data.ops.base import CountingStats
from clipray.data.ops.curation import LanguageFilter, PredicateError, WhereFilter, parse_predicate
from clipray.data.pipeline import Preprocess, op_names, preflight
from clipray.data.sources import resolve


def _labelled() -> dict[str, np.ndarray]:
    """LAION-like metadata with the expected verdict of `punsafe < 0.5`, `similarity >= 0.28`,
    `lang in ['en', 'de']` worked out per row."""
    rows = [  # key, punsafe, similarity, lang, first failing predicate (None = kept)
        ("k0", 0.1, 0.30, "en", None),
        ("k1", 0.9, 0.30, "en", "where_punsafe_lt_0.5"),
        ("k2", 0.5, 0.40, "de", "where_punsafe_lt_0.5"),  # boundary: 0.5 is not < 0.5
        ("k3", 0.2, 0.28, "de", None),  # boundary: 0.28 >= 0.28 holds
        ("k4", 0.2, 0.27, "en", "where_similarity_ge_0.28"),
        ("k5", None, 0.90, "en", "where_punsafe_lt_0.5"),  # null never satisfies a predicate
        ("k6", 0.0, 0.50, "fr", "where_lang_in_en_de"),
        ("k7", 0.7, 0.10, "fr", "where_punsafe_lt_0.5"),  # fails all three: counted once, first
    ]
    return {"key": np.array([r[0] for r in rows], dtype=object),
            "punsafe": np.array([r[1] for r in rows], dtype=object),
            "similarity": np.array([r[2] for r in rows], dtype=np.float64),
            "lang": np.array([r[3] for r in rows], dtype=object),
            "expected": np.array([r[4] for r in rows], dtype=object)}


def test_where_drops_exactly_the_failing_rows_counted_per_predicate():
    batch = _labelled()
    expected = batch.pop("expected")
    stats = CountingStats()
    out = WhereFilter(["punsafe < 0.5", "similarity >= 0.28", "lang in ['en', 'de']"])(batch, stats)
    assert list(out["key"]) == [k for k, e in zip(batch["key"], expected) if e is None]
    want: dict[str, int] = {}
    for e in expected:
        if e is not None:
            want[e] = want.get(e, 0) + 1
    assert dict(stats.dropped) == want == {"where_punsafe_lt_0.5": 4, "where_similarity_ge_0.28": 1,
                                           "where_lang_in_en_de": 1}
    assert sum(stats.dropped.values()) + len(out["key"]) == len(batch["key"])


@pytest.mark.parametrize("text,column,op,value", [
    ("punsafe<0.5", "punsafe", "<", 0.5), ("width >= 256", "width", ">=", 256),
    ("source != 'laion'", "source", "!=", "laion"), ("lang == en", "lang", "==", "en"),
    ("lang not in ['fr', 'es']", "lang", "not in", ("fr", "es")), ("aesthetic > -1e-3", "aesthetic", ">", -1e-3),
])
def test_predicate_grammar(text, column, op, value):
    p = parse_predicate(text)
    assert (p.column, p.op, p.value) == (column, op, value)


@pytest.mark.parametrize("text,fragment", [
    ("punsafe", "expected `column op value`"), ("punsafe < [1,", "cannot read the value"),
    ("lang in 'en'", "takes a non-empty list"), ("x in [1, 'a']", "mixes strings and numbers"),
])
def test_bad_predicates_are_refused_with_the_reason(text, fragment):
    with pytest.raises(PredicateError, match=fragment.replace("[", r"\[").replace("`", ".")):
        parse_predicate(text)


def _parquet(tmp_path, **columns) -> str:
    path = tmp_path / "part-0.parquet"
    base = {"key": ["a"], "caption": ["a red dog"], "jpg": pa.array([b"x"], pa.binary())}
    pq.write_table(pa.table({**base, **columns}), path)
    return str(tmp_path)


def test_predicate_on_missing_column_or_wrong_type_fails_before_ray_naming_column_and_file(tmp_path):
    src = resolve(_parquet(tmp_path, punsafe=[0.1], lang=["en"]))
    check_where(src, ["punsafe < 0.5", "lang == 'en'"])  # fits
    with pytest.raises(CurationError, match=r"part-0\.parquet.*no column 'punsaf'.*did you mean 'punsafe'"):
        check_where(src, ["punsaf < 0.5"])
    with pytest.raises(CurationError, match=r"part-0\.parquet.*column 'lang' is string, the value is a number"):
        check_where(src, ["lang < 3"])
    with pytest.raises(CurationError, match=r"column 'punsafe' is double, the value is a string"):
        check_where(src, ["punsafe == 'high'"])
    # through the pipeline's preflight, as `clipray train` / `data curate` run it (no Ray started)
    config = load_config(data={"name": "t", "data": {"source": str(tmp_path), "where": ["similarity >= 0.3"]}})
    with pytest.raises(CurationError, match="no column 'similarity'"):
        preflight(config)
    import ray

    assert not ray.is_initialized()


def test_where_and_language_are_put_in_the_chain_and_read_their_columns():
    from clipray.data.pipeline import read_columns

    config = load_config(data={"name": "t", "data": {"where": ["punsafe < 0.5"], "languages": ["en"]}})
    names = op_names(config)
    assert names[0] == "where" and names[names.index("clean_caption") + 1] == "language"
    assert "punsafe" in read_columns(config)


LANG_ROWS = [  # caption, language it is written in
    ("a photograph of a red double-decker bus driving through the city", "en"),
    ("the old lighthouse stands on a rocky coast at sunset", "en"),
    ("ein kleiner Hund spielt im Garten mit einem roten Ball", "de"),
    ("un chat noir dort sur le canapé du salon", "fr"),
    ("una casa blanca junto al mar con flores en el balcón", "es"),
    ("a bowl of fresh strawberries on a wooden kitchen table", "en"),
    ("die Berge sind im Winter mit Schnee bedeckt", "de"),
    ("東京の夜景とネオンの光", "ja"),
]


def test_language_filter_keeps_only_the_listed_languages():
    f = LanguageFilter(["en", "de"])
    assert f.identify([c for c, _ in LANG_ROWS]) == [lang for _, lang in LANG_ROWS]
    batch = {"key": np.array([f"k{i}" for i in range(len(LANG_ROWS))], dtype=object),
             "caption": np.array([c for c, _ in LANG_ROWS], dtype=object)}
    stats = CountingStats()
    out = f(batch, stats)
    assert list(out["key"]) == [f"k{i}" for i, (_, lang) in enumerate(LANG_ROWS) if lang in ("en", "de")]
    assert dict(stats.dropped) == {"language": 3}


def test_language_filter_refuses_unknown_codes():
    with pytest.raises(ValueError, match=r"\['xx'\] are not languages"):
        LanguageFilter(["en", "xx"])


def test_where_and_language_in_the_training_chain_count_drops(tmp_path):
    """The same ops inside `Preprocess` (what every training actor runs): rows_in = rows_out + drops."""
    import io

    from PIL import Image

    def jpg(c):
        buf = io.BytesIO()
        Image.new("RGB", (40, 40), c).save(buf, format="JPEG")
        return buf.getvalue()

    config = load_config(data={"name": "t", "model": {"vision": {"image_size": 32, "patch_size": 8},
                                                      "text": {"context_length": 16}},
                               "data": {"where": ["punsafe < 0.5"], "languages": ["en"]}})
    captions = [c for c, _ in LANG_ROWS]
    table = pa.table({"key": [f"k{i}" for i in range(len(captions))], "caption": captions,
                      "jpg": pa.array([jpg((i * 30, 0, 0)) for i in range(len(captions))], pa.binary()),
                      "punsafe": [0.9 if i == 0 else 0.1 for i in range(len(captions))]})
    from clipray.data.stats import PipelineStats

    stats = PipelineStats()
    out = Preprocess(config, train=False, stats=stats)(table)
    snap = stats.snapshot()
    # k0 (English) fails the predicate; of the other seven, the German, French, Spanish and
    # Japanese captions are not English.
    assert snap["dropped"] == {"where_punsafe_lt_0.5": 1, "language": 5}
    assert list(out["key"]) == ["k1", "k5"] and snap["rows_out"] == 2 and snap["rows_in"] == 8


def test_training_refuses_dataset_wide_stages():
    for data in ({"dedup": "near"}, {"decontaminate": ["/some/eval"]}):
        config = load_config(data={"name": "t", "data": {"source": "/nowhere", **data}})
        with pytest.raises(CurationError, match=r"curate first.*clipray data curate"):
            refuse_dataset_wide(config)
    refuse_dataset_wide(load_config(data={"name": "t"}))  # defaults: nothing dataset-wide
