"""slurm/train.sbatch and slurm/precompute.sbatch, run with fake srun/scontrol and a recording
command in place of the CLI: the arguments and environment each task gets."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

RECORDER = """#!/usr/bin/env bash
python3 - "$@" <<'PY'
import json, os, sys
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps({"args": sys.argv[1:], "triton": os.environ.get("TRITON_CACHE_DIR"),
                        "master": os.environ.get("MASTER_ADDR"), "port": os.environ.get("MASTER_PORT")}) + "\\n")
PY
"""
FAKE_SRUN = """#!/usr/bin/env bash
# one task per (node, local rank): run the command with SLURM's per-task variables
while [[ "$1" == --* ]]; do shift; done
for ((rank = 0; rank < SLURM_NNODES * SLURM_NTASKS_PER_NODE; rank++)); do
  SLURM_PROCID=$rank SLURM_LOCALID=$((rank % SLURM_NTASKS_PER_NODE)) "$@"
done
"""


def _bin(tmp_path: Path) -> Path:
    b = tmp_path / "bin"
    b.mkdir()
    for name, text in {"srun": FAKE_SRUN, "scontrol": "#!/usr/bin/env bash\necho node-a\necho node-b\n", "recorder": RECORDER}.items():
        (b / name).write_text(text)
        (b / name).chmod(0o755)
    return b


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_train_sbatch_runs_one_task_per_gpu_with_requeue_settings(tmp_path):
    b = _bin(tmp_path)
    env = dict(os.environ, PATH=f"{b}:{os.environ['PATH']}", TRAIN=str(b / "recorder"), RECORD=str(tmp_path / "rec.jsonl"),
               SLURM_NTASKS_PER_NODE="2", SLURM_NNODES="2", SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="node-[a-b]", TMPDIR=str(tmp_path))
    subprocess.run(["bash", str(REPO / "slurm/train.sbatch"), "experiment=stage1", "data.shards=/data/latents"],
                   cwd=tmp_path, env=env, check=True, timeout=60)
    recs = _records(tmp_path / "rec.jsonl")
    assert len(recs) == 4  # 2 nodes x 2 GPUs
    for rank, r in enumerate(recs):
        assert r["args"][:2] == ["experiment=stage1", "data.shards=/data/latents"]
        assert {"trainer.num_nodes=2", "trainer.devices=2"} <= set(r["args"])
        assert r["triton"].endswith(f"triton-cache-4242-rank{rank}") and r["master"] == "node-a"
    assert len({r["triton"] for r in recs}) == 4
    text = (REPO / "slurm/train.sbatch").read_text()
    assert "#SBATCH --signal=SIGUSR1@90" in text and "#SBATCH --requeue" in text


def test_precompute_sbatch_takes_its_array_task(tmp_path):
    b = _bin(tmp_path)
    env = dict(os.environ, PRECOMPUTE=str(b / "recorder"), RECORD=str(tmp_path / "rec.jsonl"),
               SLURM_ARRAY_TASK_ID="3", SLURM_ARRAY_TASK_COUNT="8")
    subprocess.run(["bash", str(REPO / "slurm/precompute.sbatch"), "input_dir=/in", "out_dir=/out"], cwd=tmp_path, env=env,
                   check=True, timeout=60)
    (rec,) = _records(tmp_path / "rec.jsonl")
    assert {"partition.index=3", "partition.count=8", "input_dir=/in", "out_dir=/out"} <= set(rec["args"])
