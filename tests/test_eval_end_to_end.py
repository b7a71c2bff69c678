"""liveditor-eval end to end on tiny fixtures in each benchmark's published layout: generate with the
tiny editor, score with tiny random scoring models, read the leaderboards back; resume after kill -9;
array-task shards; loader errors that say how the data must be laid out."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from liveditor.eval.benchmarks import BenchmarkError, load_benchmark
from liveditor.eval.cli import run_eval
from liveditor.eval.leaderboard import read_leaderboard_csv
from liveditor.eval.store import ScoreStore
from liveditor.eval.tiny import make_clip_dir, make_dino_vit_dir, make_dinov2_dir, make_viclip_checkpoint
from liveditor.models import DiTConfig
from liveditor.pipeline.cli import compose_edit_config
from liveditor.pipeline.tiny import make_tiny_checkpoint, make_tiny_wan_dir
from liveditor.video import probe_video, write_video

REPO = Path(__file__).resolve().parents[1]


def clip_frames(t, seed, h=48, w=64):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return np.stack([np.roll(base, i, axis=1) for i in range(t)])


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_weights")
    wan = make_tiny_wan_dir(root / "wan")
    dit = DiTConfig.from_dict(OmegaConf.to_container(compose_edit_config(["model=tiny"]).model.dit))
    clip = make_clip_dir(root / "clip", "tiny")
    return {"wan": wan, "ckpt": make_tiny_checkpoint(root / "liveditor_tiny.safetensors", dit), "clip": clip,
            "dinov2": make_dinov2_dir(root / "dinov2"), "dino": make_dino_vit_dir(root / "dino"),
            "viclip": make_viclip_checkpoint(root / "viclip.pth")}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    ev = root / "EditVerseBench"
    (ev / "videos").mkdir(parents=True)
    (ev / "images").mkdir()
    (ev / "poses").mkdir()
    test = {}
    # As published: media paths relative to the root ("videos/x.mp4"); item 3 gives a bare name (looked up in videos/).
    for i, (cat, video1, extra) in enumerate([("change_color", "videos/v0.mp4", None), ("add_object", "videos/v1.mp4", None),
                                              ("reference_insertion", "videos/v2.mp4", "images/ref.png"),
                                              ("change_color", "v3.mp4", None), ("pose_to_video", "poses/p4.mp4", None)]):
        write_video(ev / (video1 if "/" in video1 else f"videos/{video1}"), clip_frames(9, i), fps=16)
        entry = {"<text>": f"<video1> make the car red {i}", "<video1>": video1, "<video1> link": "https://example/v",
                 "direction": "horizontal", "target_prompt": f"a red car {i}", "type": cat, "source_prompt": "a car"}
        if extra:
            entry["<image1>"] = extra
        test[str(i)] = entry
    (ev / "test.json").write_text(json.dumps(test))

    ive = root / "IVEBench"
    (ive / "videos").mkdir(parents=True)
    write_video(ive / "videos" / "a.mp4", clip_frames(40, 10), fps=24)
    frames_dir = ive / "videos" / "b"
    frames_dir.mkdir()
    from PIL import Image

    for k, f in enumerate(clip_frames(33, 11)):
        Image.fromarray(f).save(frames_dir / f"frame_{k}.png")
    write_video(ive / "videos" / "long.mp4", clip_frames(130, 12, 16, 16), fps=24)
    ann = [{"id": f"ive{n}", "src_video_name": name, "category": cat, "subcategory": sub, "source_prompt": "a street",
            "edit_prompt": f"make it snowy {n}", "target_prompt": "a snowy street", "target_phrase": phrase}
           for n, (name, cat, sub, phrase) in enumerate([("a.mp4", "Style", "winter", "snow"),
                                                         ("b", "Quantity", "quantity editing", "three cars"),
                                                         ("long", "Style", "winter", "snow")])]
    (ive / "ivebench.json").write_text(json.dumps(ann))

    vie = root / "VIE"
    (vie / "clips").mkdir(parents=True)
    write_video(vie / "clips" / "x.mp4", clip_frames(9, 20), fps=16)
    Image.fromarray(clip_frames(1, 21)[0]).save(vie / "clips" / "ref.png")
    (vie / "vie.json").write_text(json.dumps([
        {"uid": "swap1", "src": "x.mp4", "edit_instruction": "swap the car for a bus", "cat": "Object Swap"},
        {"uid": "ref1", "src": "x.mp4", "edit_instruction": "put this hat on him", "cat": "Reference Add", "ref": "ref.png"},
    ]))
    return {"editverse": ev, "ivebench": ive, "viebench": vie}


def overrides(weights, data, run_dir, *extra):
    return [
        f"run_dir={run_dir}", "progress=false",
        f"data.editverse.root={data['editverse']}", f"data.ivebench.root={data['ivebench']}",
        f"data.viebench.root={data['viebench']}", "data.viebench.annotation=vie.json", "data.viebench.videos_dir=clips",
        "data.viebench.fields.id=uid", "data.viebench.fields.source=src", "data.viebench.fields.instruction=edit_instruction",
        "data.viebench.fields.category=cat", "data.viebench.fields.reference_image=ref",
        "edit.overrides=[" + ",".join(f"'{o}'" for o in (
            "model=tiny", f"model.weights_path={weights['ckpt']}", f"model.vae_path={weights['wan']}", "sampling.steps=2",
            "video.num_frames=5", "video.buckets=[[64,48]]", "runtime.progress=false", "runtime.device=cpu")) + "]",
        f"models.clip_l14={weights['clip']}", f"models.pickscore={weights['clip']}", f"models.clip_b32={weights['clip']}",
        f"models.dinov2={weights['dinov2']}", f"models.dino_vits16={weights['dino']}", f"models.viclip={weights['viclip']}",
        "metrics.device=cpu", *extra,
    ]


def compose(ov):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(str(REPO / "configs" / "eval"), version_base="1.3"):
        return hydra_compose("eval", overrides=ov)


def test_loaders_read_each_published_layout(data):
    ev = load_benchmark("editverse", data["editverse"])
    assert [i.id for i in ev] == ["0", "1", "2", "3", "4"]
    assert ev[0].instruction == "<video1> make the car red 0" and ev[0].editor_instruction == "make the car red 0"
    assert ev[0].target_prompt == "a red car 0" and ev[0].source == str(data["editverse"] / "videos" / "v0.mp4")
    assert ev[3].source == str(data["editverse"] / "videos" / "v3.mp4") and ev[3].runnable
    assert ev[2].extra_inputs == {"reference image": str(data["editverse"] / "images" / "ref.png")} and not ev[2].runnable
    assert ev[4].extra_inputs == {"pose video": str(data["editverse"] / "poses" / "p4.mp4")} and not ev[4].runnable
    short = load_benchmark("ivebench_short", data["ivebench"], annotation="ivebench.json")
    assert [(i.id, Path(i.source).name) for i in short] == [("ive0", "a.mp4"), ("ive1", "b")]  # 40 and 33 frames
    assert [i.id for i in load_benchmark("ivebench_long", data["ivebench"], annotation="ivebench.json")] == ["ive2"]
    vie = load_benchmark("viebench", data["viebench"], annotation="vie.json", videos_dir="clips",
                         fields={"id": "uid", "source": "src", "instruction": "edit_instruction", "category": "cat", "reference_image": "ref"})
    assert [(i.id, i.category, i.runnable) for i in vie] == [("swap1", "Object Swap", True), ("ref1", "Reference Add", False)]


def test_loader_errors_say_where_data_comes_from_and_how_to_lay_it_out(tmp_path, data):
    with pytest.raises(BenchmarkError, match="EditVerseBench folder.*does not exist.*test.json"):
        load_benchmark("editverse", tmp_path / "nope")
    (tmp_path / "ev").mkdir()
    with pytest.raises(BenchmarkError, match=r"annotation file .*test.json' does not exist.*sooyek/EditVerseBench"):
        load_benchmark("editverse", tmp_path / "ev")
    (tmp_path / "ev" / "test.json").write_text(json.dumps({"0": {"<video1>": "v.mp4"}}))
    (tmp_path / "ev" / "videos").mkdir()
    with pytest.raises(BenchmarkError, match=r"entry \"0\" has no field \"type\""):
        load_benchmark("editverse", tmp_path / "ev")
    with pytest.raises(BenchmarkError, match="Coraxor/IVEBench"):
        load_benchmark("ivebench_short", data["ivebench"], annotation="missing.json")
    with pytest.raises(BenchmarkError, match=r"has no field \"instruction\".*benchmark.fields|has no field \"instruction\""):
        load_benchmark("viebench", data["viebench"], annotation="vie.json", videos_dir="clips", fields={"id": "uid", "source": "src"})


def test_all_mode_end_to_end_through_the_console_entry(tmp_path, weights, data):
    run_dir = tmp_path / "runs" / "ours"
    cmd = [sys.executable, "-m", "liveditor.eval.cli", "mode=all", "method=LIVEditor-tiny", "benchmarks=[editverse]",
           *overrides(weights, data, run_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for i in ("0", "1", "3"):
        out = run_dir / "editverse" / i / "generate.mp4"
        info = probe_video(out)
        assert (info.num_frames, info.width, info.height) == (5, 64, 48)
        assert probe_video(run_dir / "editverse" / i / "video1.mp4").num_frames == 5
    assert not (run_dir / "editverse" / "2").exists() and not (run_dir / "editverse" / "4").exists()
    assert json.loads((run_dir / "editverse" / "not_run.json").read_text()) == {
        "2": {"needs": ["reference image"], "category": "reference_insertion"},
        "4": {"needs": ["pose video"], "category": "pose_to_video"}}
    cfg = OmegaConf.load(run_dir / "eval_config.yaml")
    assert cfg.edit.resolved.model.name == "tiny" and cfg.method == "LIVEditor-tiny"

    rows = read_leaderboard_csv(run_dir / "leaderboard" / "editverse.csv")
    ours = next(r for r in rows if r["method"] == "LIVEditor-tiny")
    assert ours["kind"] == "measured" and ours["items"] == "3"
    assert ours["editing_vlm_evaluation"] == "" and ours["editing_vlm_evaluation_note"].startswith("not computed: needs a judge endpoint")
    for m in ("pick_score_video_quality", "frame_text_alignment", "video_text_alignment", "clip_temporal_consistency", "dino_temporal_consistency"):
        assert np.isfinite(float(ours[m]))
        assert ours[f"{m}_note"] == "partial 3/5"  # 5 items in the benchmark, two not run
    store_rows = [r for r in ScoreStore(run_dir / "scores" / "editverse").latest() if r.status == "ok"]
    assert float(ours["frame_text_alignment"]) == pytest.approx(
        np.mean([r.value for r in store_rows if r.metric == "frame_text_alignment"]), abs=1e-6)
    published = {r["method"]: r for r in rows if r["kind"] == "published"}
    assert float(published["LIVEditor (ISA)"]["video_text_alignment"]) == 24.55
    assert "2605.04569" in published["EditVerse"]["citation"]
    cats = read_leaderboard_csv(run_dir / "leaderboard" / "editverse_categories.csv")
    assert {r["category"] for r in cats} == {"change_color", "add_object"}
    assert next(r for r in cats if r["category"] == "change_color")["items"] == "2"
    md = (run_dir / "leaderboard" / "editverse.md").read_text()
    assert "| LIVEditor-tiny | measured |" in md and "| Runway Aleph | published |" in md and "## change_color" in md
    html_text = (run_dir / "leaderboard" / "editverse.html").read_text()
    pngs = sorted(p.name for p in (run_dir / "leaderboard").glob("*.png"))
    assert "editverse_frame_text_alignment.png" in pngs and "editverse_category_change_color.png" in pngs
    assert all(f"src='{p}'" in html_text for p in pngs)
    assert (run_dir / "leaderboard" / pngs[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ivebench_and_viebench_generate_then_score(tmp_path, weights, data):
    run_dir = tmp_path / "ours"
    out = run_eval(compose(overrides(weights, data, run_dir, "mode=generate", "benchmarks=[ivebench_short,viebench]")))
    assert sorted(out["ivebench_short"]["generate"].generated) == ["ive0", "ive1"]  # mp4 and frame folder
    assert out["viebench"]["generate"].not_runnable == {"ref1": ["reference image"]}
    out = run_eval(compose(overrides(weights, data, run_dir, "mode=score", "benchmarks=[ivebench_short,viebench]")))
    rows = {r["method"]: r for r in read_leaderboard_csv(run_dir / "leaderboard" / "ivebench_short.csv")}
    ours = rows["ours"]
    for m in ("subject_consistency_score", "background_consistency_score", "temporal_flickering_score"):
        assert 0.0 <= float(ours[m]) <= 1.0 and ours[f"{m}_note"] == ""
    assert ours["motion_smoothness_score_note"].startswith("not computed: needs AMT-G")
    assert ours["quality"] != "" and ours["quality_note"] == "partial (without MS, VTSS)"
    assert ours["compliance"] == "" and ours["compliance_note"].startswith("not computed")  # QA not applicable, no judge
    assert ours["total_note"] == "partial (without compliance, fidelity; 9 of 12 metrics missing: MS, VTSS, OSC, PSC, IS, QA, SF, MF, CF)"
    assert float(rows["InsV2V"]["total"]) == 0.65715 and rows["InsV2V"]["kind"] == "published"
    assert "not computed: needs AMT-G" in (run_dir / "leaderboard" / "ivebench_short.md").read_text()
    vie = read_leaderboard_csv(run_dir / "leaderboard" / "viebench.csv")
    assert vie[0]["vie_quality"] == "" and "judge" in vie[0]["vie_quality_note"]


def test_generate_resumes_after_kill_9_and_shards_split_items(tmp_path, weights, data):
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "liveditor.eval.cli", "mode=generate", "benchmarks=[editverse]", *overrides(weights, data, run_dir)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    first = run_dir / "editverse" / "0" / "generate.mp4"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.exists(), proc.stderr.read()[-3000:] if proc.poll() is not None else "timed out"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    stamp = first.stat().st_mtime_ns
    # Shard 1 of 2 takes items 1 and 3; shard 0 takes 0, 2 and 4 (0 is done, 2 and 4 are not runnable).
    out = run_eval(compose(overrides(weights, data, run_dir, "mode=generate", "benchmarks=[editverse]", "shard.index=1", "shard.count=2")))
    assert out["editverse"]["generate"].generated == ["1", "3"]
    out = run_eval(compose(overrides(weights, data, run_dir, "mode=generate", "benchmarks=[editverse]", "shard.index=0", "shard.count=2")))
    assert out["editverse"]["generate"].generated == [] and out["editverse"]["generate"].skipped_done == ["0"]
    assert first.stat().st_mtime_ns == stamp  # the finished item was not redone
    assert (run_dir / "eval_config.shard0.yaml").exists() and (run_dir / "eval_config.shard1.yaml").exists()
    for i in ("0", "1", "3"):  # only whole files: no temporaries left where results are read
        names = sorted(os.listdir(run_dir / "editverse" / i))
        assert [n for n in names if not n.startswith(".")] == ["generate.mp4", "video1.mp4"]
        probe_video(run_dir / "editverse" / i / "generate.mp4")


def test_score_resumes_after_kill_9_without_recomputing(tmp_path, weights, data):
    run_dir = tmp_path / "scored"
    run_eval(compose(overrides(weights, data, run_dir, "mode=generate", "benchmarks=[editverse]")))
    cmd = [sys.executable, "-m", "liveditor.eval.cli", "mode=score", "benchmarks=[editverse]", *overrides(weights, data, run_dir)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    store = ScoreStore(run_dir / "scores" / "editverse")
    deadline = time.time() + 300
    while not store.parts() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_parts = len(store.parts())
    assert killed_parts >= 1
    run_eval(compose(overrides(weights, data, run_dir, "mode=score", "benchmarks=[editverse]")))
    all_rows = store.read_all().to_pylist()
    ok = [(r["item"], r["metric"]) for r in all_rows if r["status"] == "ok"]
    assert len(ok) == len(set(ok)) == 3 * 5  # each (item, metric) computed once, across the kill
    # A third run computes nothing and writes nothing: the judge rows are already stored as not computed.
    before = len(store.parts())
    out = run_eval(compose(overrides(weights, data, run_dir, "mode=score", "benchmarks=[editverse]")))
    assert len(store.parts()) == before and out["editverse"]["score"].scored == 0
    # Once the judge is reachable its rows are computed; nothing else is.
    from test_eval_judge import FakeServer

    with FakeServer() as server:
        run_eval(compose(overrides(weights, data, run_dir, "mode=score", "benchmarks=[editverse]", f"judge.base_url={server.url}",
                                   "judge.backoff_s=0.01")))
    new_rows = store.read_all().to_pylist()[len(store.read_all().to_pylist()) - 3:]
    assert [(r["metric"], r["status"], r["value"]) for r in new_rows] == [("editing_vlm_evaluation", "ok", 7.0)] * 3
    rows = {r["method"]: r for r in read_leaderboard_csv(run_dir / "leaderboard" / "editverse.csv")}
    assert rows["scored"]["editing_vlm_evaluation"] == "7.0" and rows["scored"]["editing_vlm_evaluation_note"] == "partial 3/5"


def test_score_other_methods_outputs_in_editverse_layout_and_rank_them_together(tmp_path, weights, data):
    theirs = tmp_path / "EditVerse_Comparison_Results" / "TokenFlow"
    for i in ("0", "1", "2", "3", "4"):  # their outputs, every item, no video1.mp4: sources come from the benchmark
        write_video(theirs / i / "generate.mp4", clip_frames(7, 100 + int(i)), fps=16)
    select = "metrics.select=[frame_text_alignment,clip_temporal_consistency,video_text_alignment]"
    run_eval(compose(overrides(weights, data, tmp_path / "scores_tokenflow", "mode=score", "benchmarks=[editverse]",
                               "method=TokenFlow-measured", f"results_dir={theirs}", select)))
    ours = tmp_path / "ours"
    for i in ("0", "1"):
        write_video(ours / "editverse" / i / "generate.mp4", clip_frames(7, 200 + int(i)), fps=16)
    run_eval(compose(overrides(weights, data, ours, "mode=score", "benchmarks=[editverse]", select,
                               f"+leaderboard.compare.TokenFlow-measured={tmp_path / 'scores_tokenflow'}")))
    rows = {r["method"]: r for r in read_leaderboard_csv(ours / "leaderboard" / "editverse.csv")}
    assert rows["TokenFlow-measured"]["kind"] == "measured" and rows["TokenFlow-measured"]["items"] == "5"
    assert rows["TokenFlow-measured"]["frame_text_alignment_note"] == ""  # all 5 items
    assert rows["ours"]["frame_text_alignment_note"] == "partial 2/5"
    assert rows["ours"]["pick_score_video_quality_note"] == "not computed: not scored (no rows)"  # not selected
    assert rows["TokenFlow"]["kind"] == "published" and rows["TokenFlow"]["frame_text_alignment"] == "25.57"
    with pytest.raises(ValueError, match="holds one benchmark's results"):
        run_eval(compose(overrides(weights, data, ours, "mode=score", "benchmarks=[editverse,viebench]", f"results_dir={theirs}")))


def test_bad_input_exits_2_naming_the_key_or_folder(tmp_path):
    missing = tmp_path / "no_such_bench"
    for args, message in ((["mode=score", f"run_dir={tmp_path / 'r'}", f"data.editverse.root={missing}"],
                           f"EditVerseBench folder '{missing}' does not exist"),
                          (["mode=score", f"run_dir={tmp_path / 'r'}"], "data.editverse.root is not set"),
                          (["mode=score"], "run_dir is not set")):
        proc = subprocess.run([sys.executable, "-m", "liveditor.eval.cli", *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
