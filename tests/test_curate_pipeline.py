"""liveditor-curate end to end on real and generated clips: manifests, rejects, pairs, dedup,
WebDataset shards read back, index checksums, report, partitions, external pair manifests."""

import hashlib
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hydra import compose, initialize_config_module

from liveditor.data_pipeline.cli import run_curation
from liveditor.data_pipeline.clip_model import AestheticHead, load_aesthetic_head
from liveditor.data_pipeline.synthetic_clips import real_clip, synthetic_shots_video
from liveditor.data_pipeline.synthetic_editor import EDITS
from liveditor.video import read_video, write_video

# Small and fast: tiny random CLIP (scores carry no meaning, so the CLIP thresholds are off),
# 64 px pair videos of 8 frames, tiny shards.
FAST = [
    "clip_scores=tiny_random", "shots.min_seconds=1.0", "filters.min_seconds=1.0", "filters.min_short_side=128",
    "filters.min_sharpness=5.0", "pairs.short_side=64", "pairs.max_frames=8", "pairs.score_frames=3",
    "pairs.thresholds.min_clip_text_target=null", "pairs.thresholds.min_clip_directional=null",
    "pairs.synthetic.edits=[sepia,snow,sketch]", "shard.max_shard_bytes=60000", "progress=false",
]


def compose_cfg(overrides):
    with initialize_config_module(config_module="liveditor.configs.curate", version_base="1.3"):
        return compose(config_name="curate", overrides=overrides)


def make_inputs(folder):
    """A generated video with a cut and a fade, a byte copy of it (a duplicate), a real clip, broken files."""
    folder.mkdir(parents=True, exist_ok=True)
    video = synthetic_shots_video(seed=5, num_shots=3, shot_frames=(40, 50), fade_probability=0.5)
    write_video(folder / "generated.mp4", video.frames, fps=video.fps)
    shutil.copy(folder / "generated.mp4", folder / "generated_copy.mp4")
    shutil.copy(real_clip("bikes.mp4"), folder / "bikes.mp4")
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("hello")
    return folder


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("curate")
    inputs = make_inputs(root / "in")
    # Paths below base_dir: the videos' ids, and the edits drawn for their clips, do not depend on pytest's folder
    # (test_pairs_scores_and_dedup needs a copy with an edit its original lacks, which is a property of the draw).
    out = run_curation(compose_cfg(FAST + [f"base_dir={root}", "input.paths=[in]", "out_dir=out"]))
    return out, inputs


def test_manifests_keep_every_input_and_reject(curated):
    out, _ = curated
    part = out / "partitions" / "part-00000-of-00001"
    probe = pq.read_table(part / "probe.parquet").to_pylist()
    reasons = {r["path"].rsplit("/", 1)[1]: r["reject_reason"] for r in probe}
    assert reasons == {"bikes.mp4": None, "empty.mp4": "zero_bytes", "generated.mp4": None, "generated_copy.mp4": None,
                       "notes.mp4": "not_a_video"}
    shots = pq.read_table(part / "shots.parquet").to_pylist()
    generated = [r for r in shots if r["path"].endswith("/generated.mp4") and not r["reject_reason"]]
    assert len(generated) == 3 and generated[0]["cuts_in_video"] + generated[0]["fades_in_video"] == 2
    filters = pq.read_table(part / "filters.parquet")
    assert filters.num_rows == len(shots)  # rows pass through; none silently dropped
    kept = [r for r in filters.to_pylist() if not r["reject_reason"]]
    assert kept and all(r["motion_score"] > 0 and r["sharpness"] > 0 for r in kept)
    clip = pq.read_table(part / "clip_scores.parquet")
    assert clip.num_rows == filters.num_rows and "aesthetic_score" in clip.column_names
    assert (out / "resolved_config.yaml").exists() and (part / "resolved_config.yaml").exists()
    assert "tiny" in (out / "resolved_config.yaml").read_text()


def test_pairs_scores_and_dedup(curated):
    out, _ = curated
    pairs = pq.read_table(out / "dedup.parquet").to_pylist()
    kept = [p for p in pairs if not p["reject_reason"]]
    assert kept
    for p in kept:
        assert p["instruction"] in EDITS[p["edit"]].instructions
        for col in ("clip_text_target", "clip_directional", "temporal_consistency", "structure_consistency"):
            assert p[col] is not None and -1.0001 <= p[col] <= 1.0001
    # generated_copy.mp4 is a byte copy of generated.mp4: the same clips, but with edits drawn for its own clip
    # ids. Its footage ships once: every pair of one copy that passed the pairs stage is rejected
    # duplicate_source, naming the same clip of the other copy, whatever its edit.
    source = {p["pair_key"]: json.loads(p["provenance"])["source_video"].rsplit("/", 1)[1] for p in pairs}
    assert len({source[p["pair_key"]] for p in kept} & {"generated.mp4", "generated_copy.mp4"}) == 1
    copies = [p for p in pairs if p["reject_reason"] == "duplicate_source"]
    assert copies and all(p["reject_stage"] == "dedup" for p in copies)
    assert {source[p["pair_key"]] for p in copies} < {"generated.mp4", "generated_copy.mp4"}
    clips = {p["clip_id"]: source[p["pair_key"]] for p in pairs}
    for c in copies:
        assert c["duplicate_of"].split("-")[1:] == c["clip_id"].split("-")[1:]  # the same frame range
        assert clips[c["duplicate_of"]] != source[c["pair_key"]] and c["src_content_hash"]
    made = {(p["clip_id"], p["edit"]) for p in pairs}
    assert any((c["duplicate_of"], c["edit"]) not in made for c in copies)  # an edit the other copy lacks: no hash rule sees it
    # Near-duplicates by perceptual hash name a kept pair with the same edit.
    by_key = {p["pair_key"]: p for p in pairs}
    for d in (p for p in pairs if p["reject_reason"] == "duplicate"):
        assert by_key[d["duplicate_of"]]["edit"] == d["edit"] and by_key[d["duplicate_of"]]["reject_reason"] is None


def test_shards_read_back_with_webdataset(curated):
    import webdataset as wds

    out, _ = curated
    index = json.loads((out / "shards" / "index.json").read_text())
    tars = sorted((out / "shards").glob("edit-*.tar"))
    assert [t.name for t in tars] == [s["name"] for s in index["shards"]] and len(tars) >= 2
    for entry, tar in zip(index["shards"], tars):
        assert hashlib.sha256(tar.read_bytes()).hexdigest() == entry["sha256"]
        assert tar.stat().st_size == entry["bytes"]
    samples = list(wds.WebDataset([str(t) for t in tars], shardshuffle=False))
    assert len(samples) == index["num_samples"] == sum(s["samples"] for s in index["shards"])
    kept = sorted(p["pair_key"] for p in pq.read_table(out / "dedup.parquet").to_pylist() if not p["reject_reason"])
    assert [s["__key__"] for s in samples] == kept
    sample = samples[0]
    meta = json.loads(sample["json"])
    assert {"instruction", "category", "source_caption", "target_caption", "fps", "frames", "size", "scores", "provenance"} <= set(meta)
    src_path = out / "check_src.mp4"
    src_path.write_bytes(sample["src.mp4"])
    clip = read_video(src_path)
    assert clip.num_frames == meta["frames"] and list(clip.size) == meta["size"]
    assert meta["provenance"]["source_video"].endswith(".mp4")


def test_report_funnel_and_histograms(curated):
    out, _ = curated
    funnel = json.loads((out / "report" / "funnel.json").read_text())["funnel"]
    stages = {s["stage"]: s for s in funnel}
    assert stages["probe"]["rows"] == 5 and stages["probe"]["kept"] == 3
    assert stages["probe"]["rejected_here"] == {"not_a_video": 1, "zero_bytes": 1}
    assert stages["dedup"]["rejected_here"].get("duplicate_source", 0) >= 1
    assert stages["shard"]["rows"] == stages["dedup"]["kept"]
    html = (out / "report" / "index.html").read_text()
    assert "Funnel" in html and "zero_bytes" in html
    pngs = list((out / "report").glob("*.png"))
    assert any("clip_directional" in p.name for p in pngs)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_partitions_give_the_same_shards_as_one_run(curated, tmp_path):
    out_single, inputs = curated
    cfg = FAST + [f"base_dir={inputs.parent}", "input.paths=[in]", f"out_dir={tmp_path / 'parts'}", "partition.count=2"]
    for i in (0, 1):  # two tasks of a job array: per-partition stages only
        run_curation(compose_cfg(cfg + [f"partition.index={i}"]))
    assert not (tmp_path / "parts" / "shards").exists()
    out = run_curation(compose_cfg(cfg))  # the merge: finished partitions skipped, then dedup/shard/report
    single = sorted((out_single / "shards").glob("*.tar"))
    assert [t.name for t in sorted((out / "shards").glob("*.tar"))] == [t.name for t in single]
    for t in single:
        assert (out / "shards" / t.name).read_bytes() == t.read_bytes()


def test_rerun_skips_finished_stages(curated, caplog):
    out, inputs = curated
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    with caplog.at_level("INFO", logger="liveditor.curate"):
        run_curation(compose_cfg(FAST + [f"base_dir={inputs.parent}", "input.paths=[in]", "out_dir=out"]))
    assert "finished earlier, skipped" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == before


def test_external_pair_manifest(tmp_path):
    rng = np.random.default_rng(0)
    base = (rng.random((12, 96, 128, 3)) * 255).astype(np.uint8)
    write_video(tmp_path / "videos" / "a_src.mp4", base, fps=16)
    write_video(tmp_path / "videos" / "a_tgt.mp4", EDITS["sepia"].apply(base, rng), fps=16)
    rows = [{"source_video": "videos/a_src.mp4", "instruction": "Make it sepia.", "edited_video": "videos/a_tgt.mp4"},
            {"source_video": "videos/missing.mp4", "instruction": "Make it snow.", "edited_video": "videos/a_tgt.mp4"}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run_curation(compose_cfg(FAST + [
        f"out_dir={tmp_path / 'out'}", "stages=[pairs,dedup,shard,report]", "pairs.synthetic.enabled=false",
        f"+pairs.external=[{{name: senorita, manifest: {tmp_path / 'pairs.jsonl'}}}]"]))
    pairs = pq.read_table(out / "dedup.parquet").to_pylist()
    assert sorted(p["reject_reason"] or "" for p in pairs) == ["", "decode_error"]
    good = next(p for p in pairs if not p["reject_reason"])
    assert good["origin"] == "external:senorita" and good["structure_consistency"] > 0.9
    index = json.loads((out / "shards" / "index.json").read_text())
    assert index["num_samples"] == 1


def test_errors_name_the_input_and_the_fix(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="input.paths"):
        run_curation(compose_cfg(FAST + [f"out_dir={tmp_path}", f"input.paths=[{tmp_path / 'empty'}]", "stages=[probe]"]))
    with pytest.raises(ValueError, match="clip_scores.checkpoint is not set"):
        from liveditor.data_pipeline.clip_model import load_clip_scorer

        load_clip_scorer(compose_cfg([]).clip_scores)
    with pytest.raises(ValueError, match="unknown stages"):
        run_curation(compose_cfg(FAST + [f"out_dir={tmp_path}", "stages=[probe,caption]"]))
    with pytest.raises(FileNotFoundError, match="dedup needs the pairs of all 2 partitions"):
        run_curation(compose_cfg(FAST + [f"out_dir={tmp_path / 'x'}", "partition.count=2", "stages=[dedup]"]))


def test_aesthetic_head_loads_laion_layout(tmp_path):
    dims = [(64, 32), (32, 16), (16, 1)]
    state = {}
    for i, (a, b) in zip((0, 2, 4), dims):
        state[f"layers.{i}.weight"], state[f"layers.{i}.bias"] = torch.randn(b, a), torch.randn(b)
    torch.save(state, tmp_path / "aes.pth")
    head = load_aesthetic_head(str(tmp_path / "aes.pth"), 64)
    x = torch.randn(5, 64)
    ref = torch.nn.functional.normalize(x, dim=-1)
    for i in (0, 2, 4):
        ref = ref @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    assert torch.allclose(head(x), ref.squeeze(-1), atol=1e-5)
    with pytest.raises(ValueError, match="expects 64-d"):
        load_aesthetic_head(str(tmp_path / "aes.pth"), 512)
    assert isinstance(AestheticHead({"weight": torch.randn(1, 8), "bias": torch.zeros(1)}), AestheticHead)


@pytest.mark.parametrize("launcher,target", [("slurm", "SlurmLauncher"), ("local", "LocalLauncher")])
def test_launcher_configs_compose_and_sweep_partitions(launcher, target):
    with initialize_config_module(config_module="liveditor.configs.curate", version_base="1.3"):
        cfg = compose(config_name="curate", overrides=[f"hydra/launcher={launcher}", "partition.count=8"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    assert cfg.hydra.sweeper.params["partition.index"] == "range(0,8)"  # one job per partition


def test_clip_embeddings_do_not_depend_on_what_shares_the_chunk():
    # Partitioned and single runs put different clips in a chunk; a clip's (and a text's)
    # embedding must be bit-identical either way, or scores at a threshold or a dedup tie flip.
    import torch

    from liveditor.data_pipeline.clip_model import load_clip_scorer

    scorer = load_clip_scorer(compose_cfg(["clip_scores=tiny_random"]).clip_scores)
    rng = np.random.default_rng(0)
    groups = [(rng.random((3, 64, 96, 3)) * 255).astype(np.uint8) for _ in range(9)]
    together = scorer.embed_frame_groups(groups)
    assert all(torch.equal(a, b) for a, b in zip(scorer.embed_frame_groups(groups[2:4]), together[2:4]))
    texts = ["make it sepia", "add falling snow", "turn it into a pencil sketch"]
    fresh = load_clip_scorer(compose_cfg(["clip_scores=tiny_random"]).clip_scores)
    assert torch.equal(fresh.embed_texts(texts[1:2])[0], scorer.embed_texts(texts)[1])
