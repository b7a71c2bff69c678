"""Pairs stage: exact target frame rate by timestamps (constant and variable rate sources), no
upscaling, clip-stage scores carried into the shard json, the README's laptop command gives shards,
a run that ships nothing says so, exact pair size by `pairs.crop_size`, and the mirror, blur,
brighten and copy edits (copy only when listed)."""

import io
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import webdataset as wds
from test_curate_pipeline import FAST, compose_cfg

from liveditor.data_pipeline.cli import run_curation
from liveditor.data_pipeline.clip_model import load_clip_scorer
from liveditor.data_pipeline.pair_video import FrameTimes, decode_frames, output_size, read_frame_times, resample_by_time
from liveditor.data_pipeline.pairs import make_pair, sample_clip, score_made_pairs, synthetic_edit_names
from liveditor.data_pipeline.stage import stable_hash
from liveditor.data_pipeline.synthetic_clips import real_clip
from liveditor.data_pipeline.synthetic_editor import EDITS
from liveditor.video import probe_video, read_video


def _editor_preprocess():
    """liveditor/pipeline/preprocess.py, loaded on its own (the package's __init__ pulls in the whole model)."""
    import importlib.util

    import liveditor

    path = Path(liveditor.__file__).parent / "pipeline" / "preprocess.py"
    spec = importlib.util.spec_from_file_location("_editor_preprocess", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _frame_times(seconds):
    seconds = np.asarray(seconds, dtype=np.float64)
    pts = np.round(seconds * 90000).astype(np.int64)
    return FrameTimes(pts, pts / 90000, 1 / 90000, float(pts[-1] / 90000 + np.median(np.diff(seconds))))


def _decoded_times(data_or_path):
    with av.open(io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else str(data_or_path)) as c:
        s = c.streams.video[0]
        return float(s.average_rate), [float(f.time) for f in c.decode(s)]


def _write_vfr(path, seconds, size=(96, 64)):
    """Frame i shows grey level 2*i (readable back after lossy coding), at presentation time seconds[i]."""
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        s.options = {"crf": "0"}
        for i, t in enumerate(seconds):
            f = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), 2 * i, np.uint8), format="rgb24")
            f.pts, f.time_base = int(round(t * 1000)), Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.mark.parametrize("fps", [25.0, 30000 / 1001, 30.0, 24.0, 50.0, 60.0, 15.0])
def test_constant_rate_sources_resample_like_the_editor(fps):
    resample_indices = _editor_preprocess().resample_indices

    times = _frame_times(np.arange(300) / fps)
    for start, end in ((0, 300), (17, 160)):
        ours = resample_by_time(times, start, end, 16, 81)
        editor = [start + i for i in resample_indices(end - start, fps, 16, 81)]
        assert ours == editor, (fps, start)


def test_variable_rate_source_comes_out_at_exactly_16_fps(tmp_path):
    rng = np.random.default_rng(0)
    seconds = np.concatenate([[0.0], np.cumsum(rng.choice([1 / 60, 1 / 30, 1 / 20, 1 / 12], size=99))])
    seconds = np.round(seconds, 3)
    _write_vfr(tmp_path / "vfr.mp4", seconds)
    times = read_frame_times(str(tmp_path / "vfr.mp4"))
    assert np.allclose(times.seconds, seconds, atol=1e-3)
    pcfg = compose_cfg(["pairs.max_frames=200", "pairs.short_side=64"]).pairs
    frames = sample_clip(str(tmp_path / "vfr.mp4"), 0, 100, 96, 64, pcfg)
    # Output frame k shows the source frame on screen at k/16 s: the last one with time <= k/16.
    k = np.arange(int(np.floor(times.end_s * 16 - 1e-6)) + 1)
    expected = np.searchsorted(seconds, k / 16 + 1e-6, side="right") - 1
    assert frames.shape == (len(k), 64, 96, 3)
    assert np.abs(frames[:, 32, 48, 1].astype(int) - 2 * expected).max() <= 2


@pytest.mark.parametrize("clip,fps", [("bikes.mp4", 25.0), ("carphone_pristine.mp4", 30000 / 1001)])
def test_pair_videos_are_written_at_target_fps(tmp_path, clip, fps):
    path = str(real_clip(clip))
    info = av.open(path).streams.video[0]
    width, height = info.codec_context.width, info.codec_context.height
    clip_row = {"clip_id": "c0", "path": path, "caption": None, "start_frame": 10, "end_frame": 90, "fps": fps,
                "width": width, "height": height, "motion_score": 3.5, "sharpness": 40.0,
                "clip_caption_similarity": None, "aesthetic_score": 5.0}
    pcfg = compose_cfg(["pairs.short_side=240"]).pairs
    row, src, tgt = make_pair({"kind": "synthetic", "clip": clip_row, "edit": "sepia"}, pcfg, str(tmp_path), {})
    assert row["fps"] == 16.0 and row["frames"] == len(src) == int(np.floor(80 / fps * 16 - 1e-6)) + 1
    for side in ("src_path", "tgt_path"):
        rate, times = _decoded_times(row[side])
        assert rate == 16 and np.allclose(times, np.arange(len(src)) / 16)
    assert (row["motion_score"], row["sharpness"], row["aesthetic_score"]) == (3.5, 40.0, 5.0)
    # Never upscaled: bikes (640x272) is scaled down to ~240 short side; carphone (176x144) stays native.
    assert (row["width"], row["height"]) == ((560, 240) if clip == "bikes.mp4" else (176, 144))


def test_output_size_never_upscales():
    assert output_size(1920, 1080, 480) == (848, 480)
    assert output_size(1280, 720, 480) == (848, 480)
    assert output_size(640, 272, 480) == (640, 272)   # below target: native
    assert output_size(426, 240, 480) == (416, 240)   # rounded down to multiples of 16, not up
    assert output_size(176, 144, 480) == (176, 144)
    for w, h in [(1000, 500), (333, 999), (64, 64), (17, 1000)]:
        ow, oh = output_size(w, h, 480)
        assert ow <= max(16, w) and oh <= max(16, h) and ow % 16 == oh % 16 == 0


def test_below_target_size_can_be_rejected(tmp_path):
    path = str(real_clip("carphone_pristine.mp4"))
    clip_row = {"clip_id": "c1", "path": path, "caption": None, "start_frame": 0, "end_frame": 60, "fps": 29.97,
                "width": 176, "height": 144}
    pcfg = compose_cfg(["pairs.below_short_side=reject"]).pairs
    row, src, _ = make_pair({"kind": "synthetic", "clip": clip_row, "edit": "sepia"}, pcfg, str(tmp_path), {})
    assert src is None and row["reject_reason"] == "resolution_below_target" and row["reject_stage"] == "pairs"
    with pytest.raises(ValueError, match="below_short_side"):
        sample_clip(path, 0, 10, 176, 144, compose_cfg(["pairs.below_short_side=upscale"]).pairs)


def test_readme_laptop_command_gives_shards_with_clip_scores(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bikes.mp4").write_bytes(real_clip("bikes.mp4").read_bytes())
    # README: liveditor-curate input.paths=[/data/raw] out_dir=outputs/curate clip_scores=tiny_random
    out = run_curation(compose_cfg([f"input.paths=[{tmp_path / 'in'}]", f"out_dir={tmp_path / 'out'}",
                                    "clip_scores=tiny_random", "progress=false"]))
    index = json.loads((out / "shards" / "index.json").read_text())
    assert index["num_samples"] >= 2
    samples = list(wds.WebDataset(sorted(str(p) for p in (out / "shards").glob("*.tar")), shardshuffle=False))
    assert len(samples) == index["num_samples"]
    for s in samples:
        meta = json.loads(s["json"])
        assert meta["fps"] == 16 and meta["size"] == [640, 272]  # 640x272 source: native size, not 1136x480
        scores = meta["scores"]
        assert set(scores) == {"clip_text_target", "clip_directional", "temporal_consistency", "structure_consistency",
                               "motion_score", "sharpness", "clip_caption_similarity", "aesthetic_score"}
        assert scores["motion_score"] > 0 and scores["sharpness"] > 0 and scores["clip_text_target"] is not None
        assert scores["aesthetic_score"] is None  # tiny_random has no aesthetic head: not computed, not invented
        rate, times = _decoded_times(s["src.mp4"])
        assert rate == 16 and len(times) == meta["frames"]
    assert "no-samples" not in (out / "report" / "index.html").read_text()


def test_a_run_with_no_samples_says_so(tmp_path, caplog):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bikes.mp4").write_bytes(real_clip("bikes.mp4").read_bytes())
    with caplog.at_level("WARNING", logger="liveditor.curate"):
        out = run_curation(compose_cfg(FAST + [f"input.paths=[{tmp_path / 'in'}]", f"out_dir={tmp_path / 'out'}",
                                              "pairs.thresholds.min_structure_consistency=1.5"]))
    assert json.loads((out / "shards" / "index.json").read_text())["num_samples"] == 0
    assert "NO SAMPLES" in caplog.text
    assert "id='no-samples'" in (out / "report" / "index.html").read_text()


def _bikes_row(clip_id="c2", name="bikes.mp4", size=(640, 272)):
    return {"clip_id": clip_id, "path": str(real_clip(name)), "caption": "cyclists on a road", "start_frame": 0,
            "end_frame": 40, "fps": 25.0, "width": size[0], "height": size[1]}


@pytest.mark.parametrize("edit", ["mirror", "sepia"])
def test_crop_size_gives_exact_pairs_with_the_edit_applied_to_the_crop(tmp_path, edit):
    pcfg = compose_cfg(["pairs.crop_size=[32,32]", "pairs.max_frames=4"]).pairs
    row, src, tgt = make_pair({"kind": "synthetic", "clip": _bikes_row(), "edit": edit}, pcfg, str(tmp_path), {})
    assert not row.get("reject_reason") and (row["width"], row["height"]) == (32, 32)
    assert src.shape == tgt.shape == (4, 32, 32, 3)
    # 640x272 covers 32x32 at 75x32 (decoded so by the decoder), then the centre crop: columns 21..52.
    path = str(real_clip("bikes.mp4"))
    times = read_frame_times(path)
    cover = decode_frames(path, times, resample_by_time(times, 0, 40, 16, 4), (75, 32))
    assert np.array_equal(src, cover[:, :, 21:53])
    assert np.array_equal(tgt, EDITS[edit].apply(src, np.random.default_rng(stable_hash(row["pair_key"]))))
    for side in ("src_path", "tgt_path"):
        assert probe_video(row[side]).width == probe_video(row[side]).height == 32
    # A source smaller than the crop is upscaled to exactly it, or rejected with below_short_side=reject.
    small = _bikes_row("c3", "carphone_pristine.mp4", (176, 144))
    up = compose_cfg(["pairs.crop_size=[192,160]", "pairs.max_frames=2"]).pairs
    assert sample_clip(small["path"], 0, 10, 176, 144, up).shape == (2, 160, 192, 3)
    reject_cfg = compose_cfg(["pairs.crop_size=[192,160]", "pairs.below_short_side=reject"]).pairs
    row, src, _ = make_pair({"kind": "synthetic", "clip": small, "edit": edit}, reject_cfg, str(tmp_path), {})
    assert src is None and row["reject_reason"] == "resolution_below_target"


@pytest.mark.parametrize("value", ["[32,33]", "[32]", "[32,32,32]", "32", "[0,16]", "[a,b]"])
def test_bad_crop_size_is_a_one_line_error_naming_the_key(tmp_path, value):
    cfg = compose_cfg(FAST + [f"pairs.crop_size={value}", f"input.paths=[{tmp_path}]", f"out_dir={tmp_path / 'out'}"])
    with pytest.raises(ValueError, match=r"pairs\.crop_size=.*multiples of 16") as err:
        run_curation(cfg)  # before probing anything
    assert "\n" not in str(err.value) and not (tmp_path / "out" / "partitions").exists()


def test_new_edits_do_what_they_say_and_copy_is_opt_in():
    src = read_video(str(real_clip("bikes.mp4")), indices=[0, 5, 10]).frames
    rng = np.random.default_rng(0)
    out = {name: EDITS[name].apply(src, rng) for name in ("mirror", "copy", "blur", "brighten")}
    for name, tgt in out.items():
        assert tgt.dtype == np.uint8 and tgt.shape == src.shape, name
        assert len(EDITS[name].instructions) == 3 and EDITS[name].target_text, name
    assert np.array_equal(out["mirror"], np.flip(src, axis=2)) and np.array_equal(out["copy"], src)

    def high_frequency(x):
        x = x.astype(np.float64)
        return (np.diff(x, axis=1) ** 2).mean() + (np.diff(x, axis=2) ** 2).mean()

    assert high_frequency(out["blur"]) < 0.3 * high_frequency(src)
    luma = lambda x: (x.astype(np.float64) @ [0.299, 0.587, 0.114]).mean()  # noqa: E731
    assert luma(out["brighten"]) > luma(src) + 25
    assert "copy" not in synthetic_edit_names(compose_cfg([]).pairs)
    assert {"mirror", "blur", "brighten", "sepia"} <= set(synthetic_edit_names(compose_cfg([]).pairs))
    assert synthetic_edit_names(compose_cfg(["pairs.synthetic.edits=[mirror,copy]"]).pairs) == ["copy", "mirror"]


def test_copy_and_mirror_pairs_keep_the_structure_score_and_copy_passes_the_floors(tmp_path):
    pcfg = compose_cfg(["pairs.short_side=64", "pairs.max_frames=4", "pairs.score_frames=3"]).pairs
    scorer = load_clip_scorer(compose_cfg(["clip_scores=tiny_random"]).clip_scores)
    sources = {}
    made = [make_pair({"kind": "synthetic", "clip": _bikes_row(), "edit": e}, pcfg, str(tmp_path), sources) for e in ("copy", "mirror")]
    score_made_pairs(made, scorer, pcfg, {"clip_directional": 0.2, "structure_consistency": 0.3})
    (copy_row, *_), (mirror_row, *_) = made
    assert copy_row["target_caption"] == copy_row["source_caption"] == "cyclists on a road"
    assert copy_row.get("clip_directional") is None  # target text = source text: no direction to score
    assert copy_row["structure_consistency"] > 0.99 and mirror_row["structure_consistency"] > 0.99  # mirror: vs the flipped source
    assert not copy_row.get("reject_reason")  # (mirror's directional score under a random CLIP is noise)
