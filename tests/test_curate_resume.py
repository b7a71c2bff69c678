"""Kill -9 in the middle of stages, rerun, and get byte-identical shards: nothing lost, nothing duplicated.

The CLI kills itself (`KILLED_CURATE`) at named points, so every run of the test hits the same windows
whatever the machine's load (a poller that sent SIGKILL from outside landed wherever the process
happened to be). The windows: after a stage's n-th chunk is saved; with a pair video or a shard
complete in its temporary file but not renamed into place; with a stage's manifest renamed into
place but its chunk folder not yet removed; in the middle of removing the pair videos after the
shard index is written. Each killed run resumes the previous one's folder."""

import signal
import subprocess
import sys

import pyarrow.parquet as pq
from test_curate_pipeline import FAST, compose_cfg, make_inputs

from liveditor.data_pipeline.cli import run_curation

# One row per resume point, so a kill lands between finished chunks of a stage.
SMALL_CHUNKS = ["probe.chunk_size=1", "shots.chunk_size=1", "filters.chunk_size=1", "clip_scores.chunk_size=1",
                "pairs.chunk_size=1"]
PART = "partitions/part-00000-of-00001"

# `liveditor-curate` that SIGKILLs itself at `<where> <n>`:
#   chunk:<stage> n   right after the n-th chunk of <stage> is saved (this process's count)
#   video n           the n-th pair video encoded into its temporary file, before the rename
#   tar n             the n-th shard written into its temporary file, before the rename
#   manifest:<stage>  <stage>'s manifest renamed into place, its .<stage>.chunks folder not yet removed
#   cleanup           shards and index written, half of a partition's media/ removed
KILLED_CURATE = """
import os, shutil, signal, sys
from contextlib import contextmanager
import liveditor.files as files
import liveditor.video as video
import liveditor.data_pipeline.stage as stage
from liveditor.data_pipeline.cli import main

where, at = sys.argv[1], int(sys.argv[2])
count = [0]
def kill():
    os.kill(os.getpid(), signal.SIGKILL)
def hit():
    count[0] += 1
    if count[0] == at:
        kill()

if where.startswith("chunk:"):
    name = where.split(":", 1)[1]
    saved = stage.write_manifest
    def write_manifest(table, path, *args):
        out = saved(table, path, *args)
        if f".{name}.chunks" in str(path):
            hit()
        return out
    stage.write_manifest = write_manifest
elif where in ("video", "tar"):
    module, suffix = (video, ".mp4") if where == "video" else (files, ".tar")
    target = module.atomic_target
    @contextmanager
    def atomic_target(path, *args, **kwargs):
        with target(path, *args, **kwargs) as tmp:
            yield tmp
            if str(path).endswith(suffix):
                hit()
    module.atomic_target = atomic_target
else:
    name = where.split(":", 1)[-1]
    rmtree = shutil.rmtree
    def patched(path, *args, **kwargs):
        path = str(path)
        if where.startswith("manifest:") and path.endswith(f".{name}.chunks") and os.path.exists(
                os.path.join(os.path.dirname(path), f"{name}.parquet")):
            kill()
        if where == "cleanup" and os.path.basename(path) == "media":
            for f in sorted(os.listdir(path))[::2]:
                os.unlink(os.path.join(path, f))
            kill()
        return rmtree(path, *args, **kwargs)
    shutil.rmtree = patched
sys.exit(main(sys.argv[3:]))
"""


def run_killed(where: str, at: int, args: list[str], timeout: int = 300) -> None:
    """Run the CLI on `args` until it kills itself at `where` (`at`-th time); fails if it did not."""
    done = subprocess.run([sys.executable, "-c", KILLED_CURATE, where, str(at), *args], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == -signal.SIGKILL, f"{where} {at}: exit {done.returncode}, not killed there:\n{done.stderr[-3000:]}"


def test_sigkill_mid_stage_then_rerun_gives_identical_shards(tmp_path):
    inputs = make_inputs(tmp_path / "in")
    overrides = FAST + SMALL_CHUNKS + [f"input.paths=[{inputs}]"]
    reference = run_curation(compose_cfg(overrides + [f"out_dir={tmp_path / 'reference'}"]))

    out = tmp_path / "killed"
    args = [*overrides, f"out_dir={out}"]
    for where, at in [("chunk:clip_scores", 2), ("video", 3), ("manifest:pairs", 1), ("tar", 2), ("cleanup", 1)]:
        run_killed(where, at, args)
        left = {  # what each kill leaves behind
            "video": lambda: list((out / PART / "media").glob(".*partial*")),  # a pair video only under a temporary name
            "manifest:pairs": lambda: (out / PART / "pairs.parquet").exists() and (out / PART / ".pairs.chunks").exists(),
            "tar": lambda: list((out / "shards").glob(".edit-*partial*")) and not (out / "shards" / "index.json").exists(),
            "cleanup": lambda: (out / "shards" / "index.json").exists() and (out / PART / "media").exists(),
        }
        assert where not in left or left[where](), where
    done = subprocess.run([sys.executable, "-m", "liveditor.data_pipeline.cli", *args], capture_output=True, text=True, timeout=300)
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
        assert not (out / PART / f".{stage}.chunks").exists(), stage  # the clean-up a kill interrupted is finished
    assert not (out / PART / "media").exists()  # shard.keep_media=false: removed once the shards are complete
    assert not list(out.rglob(".*partial*"))  # temporaries of the killed runs are gone
