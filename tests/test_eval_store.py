"""The per-item score store: whole part files only, the newest row per key, what counts as done."""

import os
import time

import pytest

from liveditor.eval.store import MetricRow, ScoreStore


def row(item, metric, status="ok", value=1.0, detail=""):
    return MetricRow("run", "editverse", item, metric, "cat", value if status == "ok" else None, status, detail)


def test_rows_round_trip_newest_wins_and_done_statuses(tmp_path):
    store = ScoreStore(tmp_path / "scores")
    assert store.latest() == [] and store.append([]) is None
    store.append([row("0", "clip"), row("0", "judge", "not_computed", detail="needs a judge endpoint"),
                  row("1", "clip", "error", detail="VideoError: broken")])
    store.append([row("0", "judge", "ok", 7.0), row("1", "clip", "not_applicable", detail="one frame")])
    latest = {r.key[2:]: r for r in store.latest()}
    assert latest[("0", "judge")].value == 7.0 and latest[("0", "clip")].value == 1.0
    assert latest[("1", "clip")].status == "not_applicable"
    assert store.done_keys() == {("run", "editverse", "0", "clip"), ("run", "editverse", "0", "judge"),
                                 ("run", "editverse", "1", "clip")}
    umask = os.umask(0)
    os.umask(umask)
    assert len(store.parts()) == 2 and all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in store.parts())


def test_leftover_temporaries_are_ignored_and_old_ones_removed(tmp_path):
    store = ScoreStore(tmp_path)
    store.append([row("0", "clip")])
    stale, fresh = tmp_path / ".part-1.parquet.partial", tmp_path / ".part-2.parquet.partial"
    stale.write_bytes(b"half a parquet file")  # what kill -9 between write and rename leaves
    fresh.write_bytes(b"another task is writing this one now")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    assert len(store.latest()) == 1
    store.remove_partials()
    assert not stale.exists() and fresh.exists()


def test_a_row_has_a_value_exactly_when_ok():
    with pytest.raises(ValueError):
        MetricRow("r", "b", "i", "m", "c", None, "ok")
    with pytest.raises(ValueError):
        MetricRow("r", "b", "i", "m", "c", 3.0, "not_computed")
    with pytest.raises(ValueError):
        MetricRow("r", "b", "i", "m", "c", None, "unknown")
