"""Generated pairs end to end (`pairs=generate`): tiny random-initialised diffusers pipelines (image
editing, image-to-video), a tiny zero-shot detector and a fake OpenAI-compatible VLM on 127.0.0.1.
Shards come out with instruction, captions, category, scores and provenance; every candidate is a
row, kept or rejected with its reason (malformed answers, wrong object presence, low VLM score);
a VLM outage (connection refused, 503, 429) leaves rows unfinished, never rejected: the run says so
and exits 3, and a rerun once the endpoint answers makes exactly those rows; bad model paths and
model folders of the wrong kind fail before any work and any VLM request; the reverse direction
ships the same generated video as the source; kill -9 in the middle of the stage and a rerun give
byte-identical pairs and shards."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from fake_openai import FakeServer, answer, free_port, prompt_text
from test_curate_pipeline import compose_cfg
from test_curate_resume import PART, run_killed

from liveditor.data_pipeline.cli import main, run_curation
from liveditor.data_pipeline.generate.loading import ModelConfigError
from liveditor.data_pipeline.pairs import RETRY_REASONS
from liveditor.data_pipeline.synthetic_clips import synthetic_shots_video
from liveditor.video import read_video, write_video

# What the fake VLM does per category: a valid answer (and a check score), or a malformed one.
CHECK_SCORE = {"style_transfer": 8, "object_removal": 8, "object_addition": 8, "stylization": 2}
# Five of the configured categories (weight 0 leaves one out), all five drawn for every clip.
CATEGORIES = ["pairs.generate.instructions.categories.object_swap.weight=0",
              "pairs.generate.instructions.categories.human_edit.weight=0", "pairs.generate.instructions.categories_per_clip=5"]
# Expected outcome per category (the same for every clip):
EXPECTED = {
    "style_transfer": None,                            # valid answer, score 8: shipped
    "object_removal": None,                            # absent rule, max_presence_absent 1.0: shipped
    "object_addition": "object_presence_wrong",        # present rule, min_presence above 1: never met
    "stylization": "vlm_instruction_following_low",    # score 2 < min_score 6
    "other": "instruction_malformed",                  # the fake VLM never answers JSON for it
}


def vlm_reply(request):
    text = prompt_text(request)
    if "Edit category: " in text:
        category = text.split("Edit category: ", 1)[1].split(":", 1)[0]
        if category == "other":
            return answer("Maybe change the colour of something?")
        obj = {"object_removal": "the dog", "object_addition": "a cat"}.get(category, "")
        return answer("```json\n" + json.dumps({
            "instruction": f"Apply a {category} edit to the clip.", "reverse_instruction": f"Undo the {category} edit.",
            "source_caption": "a moving test pattern", "target_caption": f"a moving test pattern after a {category} edit",
            "edited_object": obj, "category": category}) + "\n```")
    instruction = text.split("Editing instruction: ", 1)[1].split("\n", 1)[0]
    category = instruction.split("Apply a ", 1)[1].split(" edit", 1)[0]
    return answer(json.dumps({"score": CHECK_SCORE[category], "reason": "judged"}))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from liveditor.data_pipeline.generate.tiny import (make_tiny_anchor_pipeline_dir, make_tiny_detector_dir,
                                                       make_tiny_video_pipeline_dir)

    root = tmp_path_factory.mktemp("models")
    return {"anchor": make_tiny_anchor_pipeline_dir(root / "ip2p"), "video": make_tiny_video_pipeline_dir(root / "ti2v"),
            "detect": make_tiny_detector_dir(root / "gdino")}


@pytest.fixture(scope="module")
def server():
    with FakeServer() as s:
        s.respond = vlm_reply
        yield s


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("in")
    video = synthetic_shots_video(seed=3, num_shots=2, shot_frames=(30, 34), fade_probability=0.0)
    write_video(folder / "two_shots.mp4", video.frames, fps=video.fps)
    return folder


def overrides(models, server_url, inputs, out, *extra):
    return [
        "pairs=generate", "clip_scores=tiny_random", "shots.min_seconds=1.0", "filters.min_seconds=1.0",
        "filters.min_short_side=128", "filters.min_sharpness=5.0", "pairs.short_side=64", "pairs.max_frames=9",
        "pairs.score_frames=3", "pairs.thresholds.min_structure_consistency=null", "shard.max_shard_bytes=60000",
        "shard.keep_media=true",
        "progress=false", "pairs.generate.buckets=[[96,64],[64,96]]", "pairs.generate.batch_size=2",
        "pairs.generate.device=cpu",  # a CPU test everywhere (float32; byte-identical reruns)
        f"pairs.generate.vlm.base_url={server_url}", "pairs.generate.vlm.backoff_s=0.01", "pairs.generate.vlm.max_retries=1",
        "pairs.generate.vlm.timeout_s=5", *CATEGORIES, "pairs.generate.instructions.max_attempts=2",
        f"pairs.generate.anchor.path={models['anchor']}", "pairs.generate.anchor.steps=2",
        f"pairs.generate.video.path={models['video']}", "pairs.generate.video.steps=2",
        f"pairs.generate.detect.path={models['detect']}", "pairs.generate.detect.frames=3",
        "pairs.generate.detect.min_presence=1.01", "pairs.generate.detect.max_presence_absent=1.0",
        "pairs.generate.vlm_check.min_score=6", f"input.paths=[{inputs}]", f"out_dir={out}", *extra,
    ]


@pytest.fixture(scope="module")
def curated(models, server, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("curate") / "out"
    return run_curation(compose_cfg(overrides(models, server.url, inputs, out))), overrides(models, server.url, inputs, out)


def rows(out):
    return pq.read_table(out / PART / "pairs.parquet").to_pylist()


def test_every_candidate_is_a_row_kept_or_rejected_with_its_reason(curated):
    out, _ = curated
    clips = [c for c in pq.read_table(out / PART / "clip_scores.parquet").to_pylist() if not c["reject_reason"]]
    pairs = rows(out)
    assert len(clips) >= 2 and len(pairs) == 5 * len(clips)  # nothing lost: 5 categories per kept clip
    for p in pairs:
        assert p["origin"] == "generated" and p["reject_reason"] == EXPECTED[p["category"]], (p["category"], p["reject_reason"], p["error"])
        prov = json.loads(p["provenance"])
        assert prov["category"] == p["category"] and prov["direction"] == "real_to_synthetic"
        assert prov["vlm_requests"]["instruction"][0]["prompt"].startswith("You write edit instructions")
        if p["category"] == "other":
            assert "no JSON object" in p["error"] and len(prov["vlm_requests"]["instruction"]) == 2 and p["src_path"] is None
        else:
            assert p["instruction"] == f"Apply a {p['category']} edit to the clip."
            assert (p["fps"], p["frames"], p["width"], p["height"]) == (16.0, 9, 96, 64)
            assert prov["seeds"]["anchor"] != prov["seeds"]["video"]
    by = {(p["clip_id"], p["category"]): p for p in pairs}
    for clip in clips:
        addition, removal = by[(clip["clip_id"], "object_addition")], by[(clip["clip_id"], "object_removal")]
        assert 0.0 <= addition["object_presence"] <= 1.0 and addition["vlm_instruction_following"] is None  # rejected first: not asked
        assert 0.0 <= removal["object_presence"] <= 1.0 and removal["vlm_instruction_following"] == 8.0
        assert by[(clip["clip_id"], "stylization")]["vlm_instruction_following"] == 2.0
        assert by[(clip["clip_id"], "style_transfer")]["object_presence"] is None  # no object to detect


def test_shards_carry_instruction_captions_scores_and_provenance(curated, models, server):
    out, _ = curated
    index = json.loads((out / "shards" / "index.json").read_text())
    samples = list(wds.WebDataset(sorted(str(p) for p in (out / "shards").glob("*.tar")), shardshuffle=False))
    kept = sorted(p["pair_key"] for p in pq.read_table(out / "dedup.parquet").to_pylist() if not p["reject_reason"])
    assert len(samples) == index["num_samples"] == len(kept) >= 2 and [s["__key__"] for s in samples] == kept
    assert set(index["categories"]) <= {"style_transfer", "object_removal"}
    for s in samples:
        meta = json.loads(s["json"])
        assert meta["instruction"] == f"Apply a {meta['category']} edit to the clip."
        assert meta["source_caption"] == "a moving test pattern" and meta["category"] in meta["target_caption"]
        assert meta["fps"] == 16 and meta["frames"] == 9 and meta["size"] == [96, 64]
        assert meta["scores"]["vlm_instruction_following"] == 8.0
        assert ("object_presence" in meta["scores"]) and meta["scores"]["clip_text_target"] is not None
        prov = meta["provenance"]
        assert prov["origin"] == "generated" and prov["real_side"] == "src"
        assert prov["models"]["anchor"]["pipeline_class"] == "StableDiffusionInstructPix2PixPipeline"
        assert prov["models"]["anchor"]["path"] == str(models["anchor"]) and len(prov["models"]["anchor"]["weights_sha256"]) == 64
        assert prov["models"]["video"]["pipeline_class"] == "WanImageToVideoPipeline"
        assert prov["models"]["vlm"] == {"backend": "openai", "base_url": server.url, "model": "Qwen/Qwen2.5-VL-72B-Instruct",
                                         "temperature": 0, "response_format": None}
        assert set(prov["seeds"]) == {"anchor", "video"} and prov["video_prompt"] == meta["target_caption"]
        assert json.loads(prov["vlm_requests"]["instruction"][-1]["answer"].strip("`json\n"))["category"] == meta["category"]
        assert json.loads(prov["vlm_requests"]["vlm_check"][-1]["answer"])["score"] == 8
        if meta["category"] == "object_removal":
            assert prov["edited_object"] == "the dog" and prov["object_after_edit"] == "absent" and "detect" in prov["models"]
        for side in ("src.mp4", "tgt.mp4"):
            path = out / f"check.{side}"
            path.write_bytes(s[side])
            clip = read_video(path)
            assert clip.num_frames == 9 and list(clip.size) == [96, 64] and clip.fps == 16


def test_report_shows_the_generated_checks(curated):
    out, _ = curated
    funnel = json.loads((out / "report" / "funnel.json").read_text())
    assert funnel["thresholds"]["vlm_instruction_following"] == {"min": 6.0}
    pairs = {s["stage"]: s for s in funnel["funnel"]}["pairs"]
    assert set(pairs["rejected_here"]) == {"object_presence_wrong", "vlm_instruction_following_low", "instruction_malformed"}
    for col in ("object_presence", "vlm_instruction_following"):
        assert (out / "report" / f"pairs-{col}.png").stat().st_size > 0


def test_reverse_direction_ships_the_generated_video_as_the_source(curated, tmp_path):
    out, args = curated
    rev = tmp_path / "rev"
    shutil.copytree(out / "partitions", rev / "partitions", ignore=shutil.ignore_patterns("pairs.parquet", "media"))
    shutil.copytree(out / "vlm_cache", rev / "vlm_cache")  # the same answers, so no VLM request differs
    run_curation(compose_cfg(args + [f"out_dir={rev}", "stages=[pairs]", "pairs.generate.direction=synthetic_to_real"]))
    fwd = {p["pair_key"]: p for p in rows(out)}
    for p in rows(rev):
        f = fwd[p["pair_key"]]
        assert p["reject_reason"] == f["reject_reason"]
        if f["src_path"]:
            assert p["instruction"] == f"Undo the {p['category']} edit."
            assert (p["source_caption"], p["target_caption"]) == (f["target_caption"], f["source_caption"])
            # same seeds, same models: the generated video is byte for byte the forward pair's target
            assert open(p["src_path"], "rb").read() == open(f["tgt_path"], "rb").read()
            assert open(p["tgt_path"], "rb").read() == open(f["src_path"], "rb").read()
            assert json.loads(p["provenance"])["real_side"] == "tgt"


def _exit_code(call) -> int:
    try:
        call()
    except SystemExit as exc:
        return exc.code
    return 0


def _chunk_rows(out):
    return [r for p in sorted((out / PART / ".pairs.chunks").glob("0*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_unreachable_endpoint_leaves_every_row_unfinished(curated, tmp_path, capsys):
    out, args = curated
    down = tmp_path / "down"
    shutil.copytree(out / "partitions", down / "partitions", ignore=shutil.ignore_patterns("pairs.parquet", "media"))
    code = _exit_code(lambda: main(args + [f"out_dir={down}", "stages=[pairs,dedup,shard,report]",
                                           f"pairs.generate.vlm.base_url=http://127.0.0.1:{free_port()}/v1"]))
    err = capsys.readouterr().err
    n = len(rows(out))
    assert code == 3, err
    assert f"{n} rows are unfinished" in err and "instruction_endpoint_unavailable: " in err and "Rerun the same command" in err, err
    assert not (down / PART / "pairs.parquet").exists() and not (down / "dedup.parquet").exists()  # no stage after it ran
    got = _chunk_rows(down)  # kept, and marked to be asked again, not stored as finished rejects
    assert len(got) == n and {p["reject_reason"] for p in got} == {"instruction_endpoint_unavailable"}
    assert all("gave no answer after 2 attempts" in p["error"] for p in got)


def test_vlm_outage_rows_are_made_by_a_rerun_and_finished_rows_are_not_made_again(curated, tmp_path, capsys):
    """A real endpoint on 127.0.0.1 that answers 503 to one category's instruction requests and 429 to
    another's instruction-following checks, then recovers."""
    out, args = curated
    run = tmp_path / "outage"
    shutil.copytree(out / "partitions", run / "partitions", ignore=shutil.ignore_patterns("pairs.parquet", "media"))
    clips = pq.read_table(run / PART / "clip_scores.parquet")  # one kept clip is enough (and keeps the test short)
    first = next(i for i, r in enumerate(clips.to_pylist()) if not r["reject_reason"])
    pq.write_table(clips.slice(first, 1), run / PART / "clip_scores.parquet")
    clip_id = clips.slice(first, 1).to_pylist()[0]["clip_id"]
    # three categories: one answered (finished), one whose instruction requests meet 503, one whose checks meet 429
    three = ["pairs.generate.instructions.categories.object_addition.weight=0",
             "pairs.generate.instructions.categories.other.weight=0", "pairs.generate.instructions.categories_per_clip=3"]
    outage = {"on": True}

    def flaky(request):
        text = prompt_text(request)
        if outage["on"] and "Edit category: stylization" in text:
            return 503, {"error": "the model is overloaded"}
        if outage["on"] and "Editing instruction: Apply a object_removal edit" in text:
            return 429, {"error": "rate limited"}
        return vlm_reply(request)

    with FakeServer() as server:
        server.respond = flaky
        argv = args + [f"out_dir={run}", "stages=[pairs,dedup,shard,report]", f"pairs.generate.vlm.base_url={server.url}", *three]
        assert _exit_code(lambda: main(argv)) == 3
        err = capsys.readouterr().err
        first = _chunk_rows(run)
        assert sorted(p["category"] for p in first) == ["object_removal", "style_transfer", "stylization"]
        assert not (run / PART / "pairs.parquet").exists()
        want = {"stylization": "instruction_endpoint_unavailable", "object_removal": "vlm_check_endpoint_unavailable",
                "style_transfer": None}
        assert {p["category"]: p["reject_reason"] for p in first} == want and set(want.values()) - {None} == RETRY_REASONS
        assert "2 rows are unfinished" in err and "HTTP 503" in err + "".join(p["error"] or "" for p in first), err
        finished = {p["pair_key"]: os.stat(p["tgt_path"]).st_ino for p in first if p["category"] == "style_transfer"}
        sent = len(server.requests)

        outage["on"] = False
        assert _exit_code(lambda: main(argv)) == 0, capsys.readouterr().err
        again = [prompt_text(r) for r in server.requests[sent:]]
        # only the unfinished rows were asked again: the stylization instructions and the object_removal checks
        # (an object_removal row is made again from its cached instruction)
        assert again and all("Edit category: stylization" in t or "Apply a stylization edit" in t
                             or "Apply a object_removal edit" in t for t in again), again
        assert sum("Edit category: stylization" in t for t in again) == 1
    got = rows(run)
    reference = {p["pair_key"]: p for p in rows(out) if p["clip_id"] == clip_id}
    assert sorted(p["pair_key"] for p in got) == sorted(k for k, p in reference.items() if p["category"] in want)
    for p in got:  # as a run without the outage
        assert (p["reject_reason"], p["instruction"]) == (EXPECTED[p["category"]], reference[p["pair_key"]]["instruction"])
    assert {p["pair_key"]: os.stat(p["tgt_path"]).st_ino for p in got if p["pair_key"] in finished} == finished
    index = json.loads((run / "shards" / "index.json").read_text())
    assert index["num_samples"] == 2  # style_transfer and object_removal ship, stylization's score is too low


def test_an_endpoint_refusal_is_a_finished_reject_and_an_outage_is_not(tmp_path):
    from omegaconf import OmegaConf

    from liveditor.data_pipeline.generate.instructions import InstructionWriter, OpenAIBackend

    icfg = OmegaConf.create({"categories": {"style_transfer": {"weight": 1, "description": "a style"}}, "frames": 1,
                             "max_attempts": 2})
    frames = np.zeros((3, 32, 32, 3), np.uint8)
    with FakeServer() as server:
        for status, reason in ((400, "instruction_endpoint_error"), (404, "instruction_endpoint_error"),
                               (503, "instruction_endpoint_unavailable"), (429, "instruction_endpoint_unavailable")):
            server.script = [(status, {"error": "no"})]
            vcfg = OmegaConf.create({"base_url": server.url, "model": "m", "api_key_env": None, "cache_dir": None,
                                     "max_retries": 1, "backoff_s": 0.01, "timeout_s": 5, "max_tokens": 64,
                                     "parallel_requests": 1, "response_format": None})
            [res] = InstructionWriter(OpenAIBackend(vcfg), icfg).write_many([(frames, "style_transfer")])
            assert res.reason == reason, (status, res.reason, str(res))
    vcfg.base_url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: connection refused
    [res] = InstructionWriter(OpenAIBackend(vcfg), icfg).write_many([(frames, "style_transfer")])
    assert res.reason == "instruction_endpoint_unavailable"


@pytest.mark.parametrize("key,kind,found", [("anchor", "video", "WanImageToVideoPipeline"),
                                            ("video", "anchor", "StableDiffusionInstructPix2PixPipeline")])
def test_a_model_folder_of_the_wrong_kind_fails_before_any_work_and_any_vlm_request(models, inputs, tmp_path, capsys, key, kind,
                                                                                   found):
    out = tmp_path / "wrong"
    with FakeServer() as server:
        server.respond = vlm_reply
        argv = [a if not a.startswith(f"pairs.generate.{key}.path=") else f"pairs.generate.{key}.path={models[kind]}"
                for a in overrides(models, server.url, inputs, out)]
        assert _exit_code(lambda: main(argv)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"pairs.generate.{key}.path='{models[kind]}' holds a {found}" in err, err
        assert server.requests == [] and not (out / "partitions").exists()


@pytest.mark.parametrize("key,value,message", [
    ("pairs.generate.anchor.path", "/nonexistent/kontext", "pairs.generate.anchor.path='/nonexistent/kontext' does not exist"),
    ("pairs.generate.video.path", "null", "pairs.generate.video.path is not set"),
    ("pairs.generate.vlm.base_url", "null", "pairs.generate.vlm.base_url is not set"),
    ("pairs.generate.direction", "sideways", "pairs.generate.direction='sideways'"),
])
def test_bad_config_fails_before_any_work(curated, tmp_path, key, value, message):
    _, args = curated
    with pytest.raises(ModelConfigError, match=message.replace("(", r"\(")):
        run_curation(compose_cfg(args + [f"out_dir={tmp_path / 'bad'}", f"{key}={value}"]))
    assert not (tmp_path / "bad" / PART / "probe.parquet").exists()


def test_a_model_folder_that_does_not_load_is_a_named_error(curated, tmp_path):
    out, args = curated
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionInstructPix2PixPipeline"}))
    bad = tmp_path / "bad"
    shutil.copytree(out / "partitions", bad / "partitions", ignore=shutil.ignore_patterns("pairs.parquet", "media"))
    shutil.copytree(out / "vlm_cache", bad / "vlm_cache")
    with pytest.raises(ModelConfigError, match="pairs.generate.anchor.path=.*did not load"):
        run_curation(compose_cfg(args + [f"out_dir={bad}", "stages=[pairs]", f"pairs.generate.anchor.path={broken}"]))


def test_sigkill_mid_stage_then_rerun_gives_identical_pairs_and_shards(curated, tmp_path):
    reference, args = curated
    out = tmp_path / "killed"
    # The stages before pairs are finished (copied), so the subprocess starts with the generation.
    shutil.copytree(reference / "partitions", out / "partitions", ignore=shutil.ignore_patterns("pairs.parquet", "media"))
    run_killed("chunk:pairs", 1, [*args, f"out_dir={out}"])  # the stage's first chunk saved, the rest to do
    assert list((out / PART / ".pairs.chunks").glob("0*.parquet")) and not (out / PART / "pairs.parquet").exists()
    cmd = [sys.executable, "-m", "liveditor.data_pipeline.cli", *args, f"out_dir={out}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    def normalised(run):  # media paths and the VLM cache differ by run folder only
        return [{k: v.replace(str(run), "<run>") if isinstance(v, str) else v for k, v in r.items()} for r in rows(run)]

    assert normalised(out) == normalised(reference)
    tars = sorted(p.name for p in (reference / "shards").glob("*.tar"))
    assert tars and sorted(p.name for p in (out / "shards").glob("*.tar")) == tars
    for name in tars + ["index.json"]:
        assert (out / "shards" / name).read_bytes() == (reference / "shards" / name).read_bytes(), name
    assert not list(out.rglob(".*partial*"))


def test_the_standin_vlm_of_the_cpu_dry_run_answers_every_category_and_check():
    """docs/curation.md's CPU dry run uses `generate.standin_vlm`: its answers pass the same validation as a
    real VLM's, for every configured category, and its checks give the score it was started with."""
    import threading

    from omegaconf import OmegaConf

    from liveditor.data_pipeline.generate.instructions import InstructionWriter, OpenAIBackend
    from liveditor.data_pipeline.generate.standin_vlm import make_server
    from liveditor.data_pipeline.generate.vlm_check import InstructionFollowingCheck

    g = compose_cfg(["pairs=generate"]).pairs.generate
    server = make_server(0, score=7)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        vcfg = OmegaConf.merge(g.vlm, {"base_url": f"http://127.0.0.1:{server.server_address[1]}/v1", "cache_dir": None})
        backend = OpenAIBackend(vcfg)
        frames = np.full((5, 32, 48, 3), 128, np.uint8)
        categories = list(g.instructions.categories)
        results = InstructionWriter(backend, g.instructions).write_many([(frames, c) for c in categories])
        assert [r.category for r in results] == categories  # each an Instruction, none an InstructionFailure
        assert all(r.edited_object for r in results if r.object_after_edit)
        check = InstructionFollowingCheck(backend, g.vlm_check).check(results[0].instruction, frames, frames)
        assert (check.score, check.reason) == (7.0, None)
    finally:
        server.shutdown()
        server.server_close()


def test_tiny_random_models_fall_below_the_default_structure_floor(curated):
    """Why docs/curation.md's CPU dry run turns the structure floor off: a random video model keeps none of
    the source's layout, so the default `pairs.thresholds.min_structure_consistency` rejects every generated
    pair (0 samples), while with it off (as here) the run ships samples."""
    out, _ = curated
    floor = compose_cfg(["pairs=generate"]).pairs.thresholds.min_structure_consistency
    scored = [p["structure_consistency"] for p in rows(out) if p["structure_consistency"] is not None]
    assert floor is not None and scored and max(scored) < floor, (floor, scored)
    assert json.loads((out / "shards" / "index.json").read_text())["num_samples"] > 0
