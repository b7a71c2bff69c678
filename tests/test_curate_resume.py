"""Kill -9 in the middle of stages, rerun, and get byte-identical shards: nothing lost, nothing duplicated."""

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
from test_curate_pipeline import FAST, compose_cfg, make_inputs

from liveditor.data_pipeline.cli import run_curation

# One row per resume point, so a kill lands between finished chunks of a stage.
SMALL_CHUNKS = ["probe.chunk_size=1", "shots.chunk_size=1", "filters.chunk_size=1", "clip_scores.chunk_size=1",
                "pairs.chunk_size=1"]
PART = "partitions/part-00000-of-00001"


def _mid_stage(out, stage):
    """True while `stage` has finished chunks but no manifest yet (for shard: tars but no index)."""
    if stage == "shard":
        return any((out / "shards").glob("edit-*.tar")) and not (out / "shards" / "index.json").exists()
    part = out / PART
    return any((part / f".{stage}.chunks").glob("0*.parquet")) and not (part / f"{stage}.parquet").exists()


def _run_until(cmd, out, stage, timeout=120):
    """Start the CLI; SIGKILL it the moment `stage` is half done. Returns whether the kill landed mid-stage."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while proc.poll() is None and time.time() < deadline:
            if _mid_stage(out, stage):
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return False


def test_sigkill_mid_stage_then_rerun_gives_identical_shards(tmp_path):
    inputs = make_inputs(tmp_path / "in")
    overrides = FAST + SMALL_CHUNKS + [f"input.paths=[{inputs}]"]
    reference = run_curation(compose_cfg(overrides + [f"out_dir={tmp_path / 'reference'}"]))

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "liveditor.data_pipeline.cli", *overrides, f"out_dir={out}"]
    landed = [stage for stage in ("shots", "filters", "clip_scores", "pairs", "shard") if _run_until(cmd, out, stage)]
    assert len(landed) >= 3, f"kills landed mid-stage only in {landed}"
    assert "pairs" in landed
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    ref_tars = sorted(p.name for p in (reference / "shards").glob("*.tar"))
    assert ref_tars and sorted(p.name for p in (out / "shards").glob("*.tar")) == ref_tars
    for name in ref_tars + ["index.json"]:
        assert (out / "shards" / name).read_bytes() == (reference / "shards" / name).read_bytes(), name
    def rows(run, stage):  # media paths differ by run folder only
        return [{k: v.replace(str(run), "<run>") if isinstance(v, str) else v for k, v in r.items()}
                for r in pq.read_table(run / PART / f"{stage}.parquet").to_pylist()]

    for stage in ("probe", "shots", "filters", "clip_scores", "pairs"):
        assert rows(out, stage) == rows(reference, stage), stage  # same rows, same order, none twice
        assert not (out / PART / f".{stage}.chunks").exists()
    assert not list(out.rglob(".*partial*"))  # temporaries of the killed runs are gone
