"""Shard writing: parallel workers give byte-identical shards and index; the pairs stage's media/
copy is removed after sharding unless shard.keep_media=true, and a rerun still works."""

import json
import os
import shutil
import stat

from test_curate_pipeline import FAST, compose_cfg

from liveditor.data_pipeline.cli import run_curation
from liveditor.data_pipeline.synthetic_clips import real_clip

PART = "partitions/part-00000-of-00001"


def test_parallel_shards_identical_and_media_optional(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bikes.mp4").write_bytes(real_clip("bikes.mp4").read_bytes())
    base = FAST + [f"input.paths=[{tmp_path / 'in'}]", "shard.max_shard_bytes=20000"]
    one = run_curation(compose_cfg(base + [f"out_dir={tmp_path / 'one'}", "shard.workers=1", "shard.keep_media=true"]))
    tars = sorted(p.name for p in (one / "shards").glob("*.tar"))
    assert len(tars) >= 3  # enough shards for the workers to share
    media = sorted(p.name for p in (one / PART / "media").iterdir())
    assert media  # kept

    # Same pairs, shards written again by 3 workers, media removed afterwards.
    other = tmp_path / "three"
    shutil.copytree(one, other, ignore=shutil.ignore_patterns("shards", "shard.parquet", "report"))
    run_curation(compose_cfg(base + [f"out_dir={other}", "shard.workers=3", "stages=[shard,report]"]))
    assert sorted(p.name for p in (other / "shards").glob("*.tar")) == tars
    for name in tars + ["index.json"]:
        assert (other / "shards" / name).read_bytes() == (one / "shards" / name).read_bytes(), name
    assert not (other / PART / "media").exists()
    assert sorted(p.name for p in (one / PART / "media").iterdir()) == media

    # Default (keep_media=false) end to end: no media left, shards complete, a rerun skips and succeeds.
    saved = os.umask(0o022)
    try:
        lean = run_curation(compose_cfg(base + [f"out_dir={tmp_path / 'lean'}"]))
    finally:
        os.umask(saved)
    assert not (lean / PART / "media").exists()
    modes = {str(p.relative_to(lean)): stat.S_IMODE(p.stat().st_mode) for p in lean.rglob("*") if p.is_file()}
    assert modes and all(m == 0o644 for m in modes.values()), {k: oct(m) for k, m in modes.items() if m != 0o644}
    assert json.loads((lean / "shards" / "index.json").read_text()) == json.loads((one / "shards" / "index.json").read_text())
    (lean / PART / "media").mkdir()
    (lean / PART / "media" / "left.src.mp4").write_bytes(b"x")  # as if a kill interrupted the clean-up
    run_curation(compose_cfg(base + [f"out_dir={lean}"]))
    assert not (lean / PART / "media").exists()
