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
# one task per (node, local rank): run the command with SLURM's per-task variables; records srun's flags
flags=(); while [[ "$1" == --* ]]; do flags+=("$1"); shift; done
[[ -n "${SRUN_FLAGS:-}" ]] && printf '%s\\n' "${flags[@]}" > "$SRUN_FLAGS"
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
               SLURM_NTASKS_PER_NODE="2", SLURM_NNODES="2", SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="node-[a-b]", TMPDIR=str(tmp_path),
               SLURM_CPUS_PER_TASK="12", SRUN_FLAGS=str(tmp_path / "srun_flags"))
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
    # Slurm >= 22.05: srun does not inherit --cpus-per-task, so the loader workers would share one CPU
    assert "--cpus-per-task=12" in (tmp_path / "srun_flags").read_text().split()


def test_train_and_precompute_logs_go_to_a_folder_that_exists_when_slurm_opens_them():
    """SLURM opens --output before the script's first line runs: a folder the script would make is
    too late (the job fails without a log)."""
    import re

    for script in ("train.sbatch", "precompute.sbatch"):
        (output,) = re.findall(r"^#SBATCH --output=(\S+)", (REPO / "slurm" / script).read_text(), re.M)
        assert "/" not in output, f"{script}: --output={output} is in a folder that may not exist at submission"


def test_only_rank_0_writes_the_wandb_run_id(tmp_path, monkeypatch):
    from lightning.pytorch.utilities import rank_zero_only

    from liveditor.train.cli import build_logger, compose_train_config

    cfg = compose_train_config(["logger=wandb", f"run_dir={tmp_path}"])
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    build_logger(cfg, tmp_path)
    assert not (tmp_path / "wandb_id.txt").exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    first = build_logger(cfg, tmp_path)._id
    assert (tmp_path / "wandb_id.txt").read_text().strip() == first
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert build_logger(cfg, tmp_path)._id == first  # the other ranks read it when it is there


def test_precompute_sbatch_takes_its_array_task(tmp_path):
    b = _bin(tmp_path)
    env = dict(os.environ, PRECOMPUTE=str(b / "recorder"), RECORD=str(tmp_path / "rec.jsonl"),
               SLURM_ARRAY_TASK_ID="3", SLURM_ARRAY_TASK_COUNT="8")
    subprocess.run(["bash", str(REPO / "slurm/precompute.sbatch"), "input_dir=/in", "out_dir=/out"], cwd=tmp_path, env=env,
                   check=True, timeout=60)
    (rec,) = _records(tmp_path / "rec.jsonl")
    assert {"partition.index=3", "partition.count=8", "input_dir=/in", "out_dir=/out"} <= set(rec["args"])
