"""slurm/curate_submit.sh submits the partition array and a merge job that depends on it (afterok),
then returns; curate.sbatch runs the right stages for an array task and for the merge. A fake
`sbatch` (and a fake liveditor-curate) on PATH record their arguments."""

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FAKE_SBATCH = """#!/usr/bin/env python3
import json, os, sys
log = os.environ["FAKE_SBATCH_LOG"]
calls = [json.loads(line) for line in open(log)] if os.path.exists(log) else []
if os.environ.get("FAKE_SBATCH_FAIL") == str(len(calls)):
    print("sbatch: error: invalid partition specified", file=sys.stderr)
    sys.exit(1)
with open(log, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
print(f"{4200 + len(calls)};cluster0")
"""

FAKE_CURATE = """#!/usr/bin/env python3
import json, os, sys
print(json.dumps(sys.argv[1:]))
"""


def _exe(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def fake_bin(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _exe(bin_dir / "sbatch", FAKE_SBATCH)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_SBATCH_LOG=str(tmp_path / "calls.jsonl"))
    return env


def _calls(tmp_path):
    path = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_submit_array_then_dependent_merge(tmp_path, fake_bin):
    overrides = ["input.paths=[/data/raw]", "out_dir=/data/curated", "clip_scores.checkpoint=/ckpt/clip.bin"]
    done = subprocess.run([str(REPO / "slurm" / "curate_submit.sh"), "--sbatch", "--partition=cpu --account=vid",
                           "--max-parallel", "16", "8", *overrides], cwd=tmp_path, env=fake_bin,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    array, merge = _calls(tmp_path)
    script = str(REPO / "slurm" / "curate.sbatch")
    assert array[-4:] == [script, *overrides] and merge[-4:] == [script, *overrides]
    assert {"--parsable", "--partition=cpu", "--account=vid", "--array=0-7%16", "--export=ALL,PARTITIONS=8"} <= set(array)
    assert not any(a.startswith("--dependency") for a in array)
    assert "--dependency=afterok:4200" in merge  # the array's id, without the ";cluster" suffix
    assert {"--partition=cpu", "--account=vid", "--export=ALL,MERGE=1,PARTITIONS=8"} <= set(merge)
    assert "4200" in done.stdout and "4201" in done.stdout
    assert (tmp_path / "logs").is_dir()


def test_array_only_flags_stay_off_the_merge(tmp_path, fake_bin):
    # pairs=generate wants a GPU per partition task; the merge (dedup, shard, report) needs none.
    done = subprocess.run([str(REPO / "slurm" / "curate_submit.sh"), "--sbatch", "--account=vid", "--array-sbatch",
                           "--partition=gpu --gres=gpu:1", "4", "pairs=generate"], cwd=tmp_path, env=fake_bin,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    array, merge = _calls(tmp_path)
    assert {"--account=vid", "--partition=gpu", "--gres=gpu:1", "--array=0-3"} <= set(array)
    assert "--account=vid" in merge and not {"--partition=gpu", "--gres=gpu:1"} & set(merge)


def test_failed_array_submission_submits_no_merge(tmp_path, fake_bin):
    env = dict(fake_bin, FAKE_SBATCH_FAIL="0")
    done = subprocess.run([str(REPO / "slurm" / "curate_submit.sh"), "4", "out_dir=/x"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "invalid partition" in done.stderr
    assert _calls(tmp_path) == []
    bad = subprocess.run([str(REPO / "slurm" / "curate_submit.sh"), "many"], cwd=tmp_path, env=fake_bin,
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "N_PARTITIONS must be a positive integer" in bad.stderr


@pytest.mark.parametrize("merge", [False, True])
def test_sbatch_script_runs_the_right_stages(tmp_path, merge):
    curate = _exe(tmp_path / "fake-curate", FAKE_CURATE)
    env = dict(os.environ, CURATE=str(curate), PARTITIONS="8")
    if merge:
        env["MERGE"] = "1"
    else:
        env["SLURM_ARRAY_TASK_ID"] = "3"
    done = subprocess.run(["bash", str(REPO / "slurm" / "curate.sbatch"), "out_dir=/data/curated"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    args = json.loads(done.stdout)
    assert "partition.count=8" in args and args[-1] == "out_dir=/data/curated"
    if merge:
        assert "stages=[dedup,shard,report]" in args and not any(a.startswith("partition.index") for a in args)
    else:
        assert "partition.index=3" in args and "stages=[probe,shots,filters,clip_scores,pairs]" in args
