"""`liveditor learn` killed with SIGKILL while it trains, then run again: the finished data stages are
reused, training resumes from its last checkpoint (the steps before it are not trained again, none is
lost), and the evaluation scores the finished run. The plumbing scale (`--scale smallest`), 40 steps; its editor
fails the benchmark's claims, which `--check` turns into exit 1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from liveditor.train.callbacks import read_sample_log

BIN = Path(sys.executable).parent
STEPS = 40


def learn_command(out: Path) -> list[str]:
    return [str(BIN / "liveditor"), "learn", "--scale", "smallest", "--attention", "dense", "--no-progress",
            "--out", str(out), f"train.trainer.max_steps={STEPS}", "train.callbacks.checkpoint.every_n_steps=10"]


def logged_steps(log: Path) -> list[int]:
    """The step of every complete line of the sample log, repeats included."""
    steps = []
    for line in log.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except json.JSONDecodeError:  # the line a kill cut short
            pass
    return steps


def test_kill_9_while_training_then_rerun_resumes_and_finishes(tmp_path):
    out = tmp_path / "learn"
    log = out / "train-dense" / "run" / "samples.rank0.jsonl"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(learn_command(out), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Killed a few steps past its first checkpoint (step 10): those steps are trained again, the first ten not.
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and max(logged_steps(log), default=0) >= 13:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "liveditor learn ended before it trained 13 steps: nothing was killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(logged_steps(log))
    assert killed_at < STEPS, "training finished before the kill"
    assert not (out / "train-dense" / "demo_stage.json").exists() and not (out / "eval").exists()

    done = subprocess.run(learn_command(out), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stage in ("curate", "codec", "precompute"):
        assert f"{stage}: reused" in done.stdout, done.stdout
    resumed = [line for line in done.stdout.splitlines() if "resumed from" in line]
    assert resumed and f"{STEPS} steps" in resumed[0], done.stdout

    steps = logged_steps(log)
    first_run, second_run = steps[:steps.index(killed_at) + 1], steps[steps.index(killed_at) + 1:]
    assert first_run == list(range(1, killed_at + 1))
    resume_step = second_run[0] - 1  # the checkpoint the rerun started from
    assert resume_step % 10 == 0 and 10 <= resume_step < killed_at, (resume_step, killed_at)
    assert second_run == list(range(resume_step + 1, STEPS + 1))  # nothing before the checkpoint trained again
    assert sorted(read_sample_log(log)) == list(range(1, STEPS + 1))  # every step once in what readers keep

    summary = json.loads((out / "eval" / "report" / "summary.json").read_text())
    assert summary["runs"]["dense"]["final_step"] == STEPS

    # 40 steps at the plumbing scale train no editor: the verdict is printed, and --check turns it into exit 1.
    assert "dense-trained editor: FAILED" in done.stdout, done.stdout
    checked = subprocess.run([*learn_command(out), "--check"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert checked.returncode == 1, checked.stdout[-2000:] + checked.stderr[-2000:]
    assert "--check: the dense-trained editor failed its claims" in checked.stderr
    assert all(f"{stage}: reused" in checked.stdout for stage in ("curate", "codec", "precompute", "train-dense", "eval"))
    bad = subprocess.run([*learn_command(out), "--check", "--until", "codec"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "give --check or --until, not both" in bad.stderr


def test_the_curated_pairs_do_not_depend_on_the_output_folder(tmp_path):
    """Two `liveditor learn --until curate` runs under different --out folders make the same pairs: the same
    keys, instructions and videos (the clips' ids come from their paths below the curation's base_dir), so a
    user's run reproduces the published figures wherever it writes."""
    from liveditor.train.shards import iter_tar_samples

    def pairs(out: Path) -> dict:
        proc = subprocess.run([str(BIN / "liveditor"), "learn", "--scale", "smallest", "--attention", "dense", "--no-progress",
                               "--out", str(out), "--until", "curate"], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        found = {}
        for side in ("train", "heldout"):
            for tar in sorted((out / "curate" / side / "shards").glob("*.tar")):
                for key, members in iter_tar_samples(tar):
                    meta = json.loads(members["json"])
                    found[(side, key)] = (meta["instruction"], members["src.mp4"], members["tgt.mp4"])
        return found

    first, second = pairs(tmp_path / "one"), pairs(tmp_path / "elsewhere" / "two")
    assert first and first.keys() == second.keys()
    assert first == second
