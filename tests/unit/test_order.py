"""The per-epoch file plan is a pure function of (files, seed, epoch) and covers every file once."""

from clipray.data.order import DataCursor, EpochPlan, list_files, merge_consumed

FILES = tuple(f"/d/part-{i:03d}.parquet" for i in range(10))


def test_plan_is_deterministic_and_covers_every_file():
    plan = EpochPlan(FILES, seed=7, chunk_files=3)
    chunks = plan.chunks(0)
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    assert sorted(f for c in chunks for f in c) == sorted(FILES)
    assert EpochPlan(tuple(reversed(FILES)), seed=7, chunk_files=3).chunks(0) == chunks  # input order is irrelevant
    assert plan.order(1) != plan.order(0)  # a new order every epoch
    assert EpochPlan(FILES, seed=8).order(0) != plan.order(0)
    assert EpochPlan(FILES, seed=7).chunks(0) == [plan.order(0)]  # no chunk_files: one chunk per epoch


def test_cursor_round_trip_and_merge():
    cursor = DataCursor(epoch=2, chunk=1, consumed=merge_consumed([["b", "a"], ["c"]]), seed=7)
    assert cursor.consumed == ["a", "b", "c"]
    assert DataCursor.from_dict(cursor.to_dict()) == cursor
    assert DataCursor.from_dict(None) is None


def test_list_files_finds_parquet_sorted(tmp_path):
    for name in ("b.parquet", "a.parquet", "notes.txt"):
        (tmp_path / name).write_text("")
    assert list_files(str(tmp_path)) == [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
