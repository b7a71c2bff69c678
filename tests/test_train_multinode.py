"""A rehearsal of slurm/train.sbatch on one host: two "nodes" of one task each, launched by a fake srun
with SLURM's per-task variables, rendezvous through Lightning's SLURM environment (DDP, gloo) and train;
killed with kill -9 and "requeued" (the script run again) they resume from their checkpoint. And the
requeue signal itself: SIGUSR1 makes Lightning write hpc_ckpt_1.ckpt and call `scontrol requeue`, and
the requeued job resumes from it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from liveditor.train.callbacks import read_sample_log

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

FAKE_SRUN = """#!/usr/bin/env bash
# srun: every task of the allocation at once, with SLURM's per-task variables; records the pids
while [[ "$1" == --* ]]; do shift; done
n=$((SLURM_NNODES * SLURM_NTASKS_PER_NODE)); pids=()
for ((r = 0; r < n; r++)); do
  SLURM_PROCID=$r SLURM_LOCALID=$((r % SLURM_NTASKS_PER_NODE)) SLURM_NODEID=$((r / SLURM_NTASKS_PER_NODE)) SLURM_NTASKS=$n "$@" &
  pids+=($!); echo $! >> "$SRUN_PIDS"
done
rc=0; for p in "${pids[@]}"; do wait "$p" || rc=$?; done; exit $rc
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
case "$1" in
  show) for ((i = 0; i < SLURM_NNODES; i++)); do echo 127.0.0.1; done ;;
  requeue) echo "$2" >> "$REQUEUE_LOG" ;;
esac
"""


@pytest.fixture()
def cluster(tmp_path):
    b = tmp_path / "bin"
    b.mkdir()
    for name, text in {"srun": FAKE_SRUN, "scontrol": FAKE_SCONTROL}.items():
        (b / name).write_text(text)
        (b / name).chmod(0o755)
    from liveditor.train.bench import write_synthetic_shards

    shards = write_synthetic_shards(tmp_path / "shards", shards=4, per_shard=3)
    return tmp_path, b, shards


def _env(tmp_path, b, nodes: int, job: str) -> dict:
    env = dict(os.environ, PATH=f"{b}:{os.environ['PATH']}", TRAIN=str(BIN / "liveditor-train"), TMPDIR=str(tmp_path),
               SRUN_PIDS=str(tmp_path / "pids"), REQUEUE_LOG=str(tmp_path / "requeued"), SLURM_JOB_ID=job,
               SLURM_JOB_NAME="liveditor-train", SLURM_NNODES=str(nodes), SLURM_NTASKS_PER_NODE="1",
               SLURM_JOB_NODELIST="localhost", PYTHONUNBUFFERED="1")
    env.pop("MASTER_ADDR", None)
    env.pop("MASTER_PORT", None)
    return env


def _args(shards, run, *more):
    return ["experiment=tiny", f"data.shards={shards}", f"run_dir={run}", "strategy=ddp", "trainer.accelerator=cpu",
            "data.batch_size=1", *more]


def _wait_for_step(log: Path, step: int, proc, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and max(read_sample_log(log) or {0: None}) >= step:
            return
        time.sleep(0.05)
    raise AssertionError(f"no step {step} in {log} (exit {proc.poll()})")


def _signal_tasks(tmp_path: Path, sig) -> None:
    for pid in (tmp_path / "pids").read_text().split():
        try:
            os.kill(int(pid), sig)
        except ProcessLookupError:
            pass


def test_two_node_launch_kill_and_requeue_resumes(cluster):
    tmp_path, b, shards = cluster
    run = tmp_path / "run"
    args = _args(shards, run, "trainer.max_steps=8", "callbacks.checkpoint.every_n_steps=2")
    env = _env(tmp_path, b, nodes=2, job="7301")
    job = subprocess.Popen(["bash", str(REPO / "slurm/train.sbatch"), *args], cwd=tmp_path, env=env,
                           stdout=subprocess.DEVNULL, stderr=open(tmp_path / "job1.err", "w"), start_new_session=True)
    _wait_for_step(run / "samples.rank1.jsonl", 5, job)
    _signal_tasks(tmp_path, signal.SIGKILL)  # the node is lost: both tasks die at once
    job.wait(timeout=60)
    first = [read_sample_log(run / f"samples.rank{r}.jsonl") for r in (0, 1)]
    assert all(max(f) < 8 for f in first), "the job finished before it was killed"
    assert (run / "checkpoints" / "last.ckpt").exists()
    (tmp_path / "pids").unlink()
    done = subprocess.run(["bash", str(REPO / "slurm/train.sbatch"), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    logs = [read_sample_log(run / f"samples.rank{r}.jsonl") for r in (0, 1)]
    assert sorted(logs[0]) == sorted(logs[1]) == list(range(1, 9))
    shard_of = lambda key: key[len("synthetic"):][:3]  # noqa: E731
    for epoch in (0, 1):  # within an epoch the two nodes read disjoint shards
        mine = [{shard_of(k) for r in log.values() if r["position"]["epoch"] == epoch for k in r["keys"]} for log in logs]
        assert mine[0] and mine[1] and not (mine[0] & mine[1]), (epoch, mine)
    text = (run / "config.yaml").read_text()
    assert "world_size: 2" in text and "resumed_from:" in text and "checkpoints/step-" in text  # the step last.ckpt linked to


def test_requeue_signal_writes_an_hpc_checkpoint_and_the_requeued_job_resumes(cluster):
    tmp_path, b, shards = cluster
    run = tmp_path / "run"
    args = _args(shards, run, "trainer.max_steps=40", "callbacks.checkpoint.every_n_steps=1000", "strategy=single")
    env = _env(tmp_path, b, nodes=1, job="7302")
    job = subprocess.Popen(["bash", str(REPO / "slurm/train.sbatch"), *args], cwd=tmp_path, env=env,
                           stdout=subprocess.DEVNULL, stderr=open(tmp_path / "job1.err", "w"), start_new_session=True)
    _wait_for_step(run / "samples.rank0.jsonl", 3, job)
    _signal_tasks(tmp_path, signal.SIGUSR1)  # SLURM's --signal=SIGUSR1@90
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "requeued").exists():
        time.sleep(0.05)
    assert (tmp_path / "requeued").read_text().split() == ["7302"]
    assert (run / "hpc_ckpt_1.ckpt").exists()
    _signal_tasks(tmp_path, signal.SIGKILL)  # SLURM stops the requeued job's first run
    job.wait(timeout=60)
    import torch

    saved = torch.load(run / "hpc_ckpt_1.ckpt", weights_only=False)["global_step"]
    (tmp_path / "pids").unlink()
    done = subprocess.run(["bash", str(REPO / "slurm/train.sbatch"), *args, "trainer.max_steps=" + str(saved + 3)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "hpc_ckpt_1.ckpt" in (run / "config.yaml").read_text()
    assert max(read_sample_log(run / "samples.rank0.jsonl")) == saved + 3
