"""slurm/eval.sbatch passes each array task its shard, and the leaderboard job its mode (with a stand-in
for liveditor-eval that records its arguments)."""

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_script(tmp_path, env_extra, *args):
    fake = tmp_path / "fake-eval"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    fake.chmod(0o755)
    out = tmp_path / "args.txt"
    out.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update({"EVAL": str(fake), "ARGS_OUT": str(out), **env_extra})
    proc = subprocess.run(["bash", str(REPO / "slurm" / "eval.sbatch"), *args], env=env, capture_output=True, text=True, timeout=60)
    return proc, (out.read_text().splitlines() if out.exists() else [])


def test_array_task_gets_its_shard(tmp_path):
    proc, args = run_script(tmp_path, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8"}, "run_dir=/runs/x", "benchmarks=[editverse]")
    assert proc.returncode == 0, proc.stderr
    assert args == ["mode=all", "shard.count=8", "shard.index=3", "progress=false", "run_dir=/runs/x", "benchmarks=[editverse]"]
    proc, args = run_script(tmp_path, {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "8", "MODE": "generate", "SHARDS": "16"})
    assert args[:3] == ["mode=generate", "shard.count=16", "shard.index=0"]


def test_leaderboard_job_and_missing_array(tmp_path):
    proc, args = run_script(tmp_path, {"LEADERBOARD": "1"}, "run_dir=/runs/x")
    assert proc.returncode == 0 and args == ["mode=leaderboard", "progress=false", "run_dir=/runs/x"]
    proc, args = run_script(tmp_path, {}, "run_dir=/runs/x")
    assert proc.returncode != 0 and "submit with --array" in proc.stderr and args == []
