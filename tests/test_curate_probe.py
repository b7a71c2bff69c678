"""Probe stage: real videos read, every kind of broken input kept as a reject row with its reason."""

import csv
import shutil

import av
import numpy as np
import pytest

from liveditor.data_pipeline.probe import list_inputs, probe_one
from liveditor.data_pipeline.synthetic_clips import real_clip
from omegaconf import OmegaConf


def _faststart_mp4(path, frames=48):
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = 128, 96, "yuv420p"
        for _ in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray((rng.random((96, 128, 3)) * 255).astype(np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    shutil.copy(real_clip("bikes.mp4"), d / "bikes.mp4")
    (d / "zero.mp4").write_bytes(b"")
    (d / "notes.mp4").write_text("not a video\n")
    data = real_clip("bikes.mp4").read_bytes()
    (d / "cut_off.mp4").write_bytes(data[: len(data) // 3])  # moov atom at the end: lost
    _faststart_mp4(d / "fs.mp4")
    fs = (d / "fs.mp4").read_bytes()
    (d / "fs_cut_off.mp4").write_bytes(fs[: len(fs) // 2])  # header intact, frames missing
    c = av.open(str(d / "no_frames.mp4"), "w", format="mp4")
    s = c.add_stream("libx264", rate=24)
    s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
    c.start_encoding()
    c.close()
    (d / "readme.txt").write_text("ignored by folder search")
    return d


def test_probe_rows_and_reasons(bad_inputs):
    cfg = OmegaConf.create({"paths": [str(bad_inputs)], "manifest": None, "extensions": [".mp4"]})
    items = list_inputs(cfg)
    assert [p["path"].rsplit("/", 1)[1] for p in items] == sorted(
        ["bikes.mp4", "cut_off.mp4", "fs.mp4", "fs_cut_off.mp4", "no_frames.mp4", "notes.mp4", "zero.mp4"])
    rows = {r["path"].rsplit("/", 1)[1]: r for r in (probe_one(it) for it in items)}
    assert rows["bikes.mp4"]["reject_reason"] is None
    assert (rows["bikes.mp4"]["num_frames"], rows["bikes.mp4"]["width"], rows["bikes.mp4"]["height"]) == (250, 640, 272)
    assert rows["bikes.mp4"]["fps"] == pytest.approx(25.0)
    assert rows["fs.mp4"]["reject_reason"] is None and rows["fs.mp4"]["num_frames"] == 48
    assert rows["zero.mp4"]["reject_reason"] == "zero_bytes"
    assert rows["notes.mp4"]["reject_reason"] == "not_a_video"
    assert rows["cut_off.mp4"]["reject_reason"] == "truncated_or_corrupt"
    assert rows["fs_cut_off.mp4"]["reject_reason"] == "truncated_or_corrupt"
    assert rows["no_frames.mp4"]["reject_reason"] in ("zero_frames", "no_video_stream")
    for name, row in rows.items():
        if row["reject_reason"]:
            assert row["reject_stage"] == "probe" and name in row["error"]  # the message names the file


def test_manifest_input_with_captions_and_missing_file(bad_inputs, tmp_path):
    manifest = tmp_path / "videos.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "caption"])
        w.writeheader()
        w.writerow({"path": str(bad_inputs / "bikes.mp4"), "caption": "cyclists racing"})
        w.writerow({"path": "gone.mp4", "caption": "x"})
    cfg = OmegaConf.create({"paths": [], "manifest": str(manifest), "extensions": [".mp4"],
                            "manifest_path_key": "path", "manifest_caption_key": "caption"})
    rows = {r["path"].rsplit("/", 1)[1]: r for r in (probe_one(it) for it in list_inputs(cfg))}
    assert rows["bikes.mp4"]["caption"] == "cyclists racing"
    assert rows["gone.mp4"]["reject_reason"] == "missing"


def test_pyav_fallback_reads_the_same_metadata():
    path = str(real_clip("bikes.mp4"))
    a, b = probe_one({"path": path}, decoder="decord"), probe_one({"path": path}, decoder="pyav")
    assert (a["num_frames"], a["width"], a["height"]) == (b["num_frames"], b["width"], b["height"])
    assert b["decoder"] == "pyav"


@pytest.mark.parametrize("fill", ["random", "zeros"])
def test_mp4_with_middle_overwritten_is_truncated_or_corrupt(tmp_path, fill):
    # decord opens such a file, reports its header's 250 frames and decodes the last one: only
    # decoding across the file finds the damage.
    data = bytearray(real_clip("bikes.mp4").read_bytes())
    a, b = int(len(data) * 0.4), int(len(data) * 0.6)
    data[a:b] = np.random.default_rng(1).integers(0, 256, b - a, dtype=np.uint8).tobytes() if fill == "random" else bytes(b - a)
    (tmp_path / "damaged.mp4").write_bytes(bytes(data))
    row = probe_one({"path": str(tmp_path / "damaged.mp4")})
    assert row["reject_reason"] == "truncated_or_corrupt" and row["reject_stage"] == "probe"
    assert "damaged.mp4" in row["error"]
    assert probe_one({"path": str(tmp_path / "damaged.mp4")}, check_frames=0)["reject_reason"] is None  # what the check adds


def test_png_renamed_mp4_is_not_a_video(tmp_path):
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)).save(tmp_path / "photo.png")
    shutil.copy(tmp_path / "photo.png", tmp_path / "photo.mp4")
    row = probe_one({"path": str(tmp_path / "photo.mp4")})
    assert row["reject_reason"] == "not_a_video" and "still image" in row["error"] and "photo.mp4" in row["error"]


@pytest.mark.parametrize("start", [0.1, 0.25, 0.55, 0.7])
def test_damage_anywhere_is_caught(tmp_path, start):
    # 20% of the file overwritten wherever it lies: with 9 points 12.5% apart one lands inside it.
    data = bytearray(real_clip("bikes.mp4").read_bytes())
    a, b = int(len(data) * start), int(len(data) * (start + 0.2))
    data[a:b] = bytes(b - a)
    (tmp_path / "damaged.mp4").write_bytes(bytes(data))
    assert probe_one({"path": str(tmp_path / "damaged.mp4")})["reject_reason"] == "truncated_or_corrupt"
    assert probe_one({"path": str(tmp_path / "damaged.mp4")}, check_frames=0)["reject_reason"] is None  # decord alone passes it


def test_video_ids_follow_the_path_below_base_dir_not_where_the_tree_lies(tmp_path):
    """The same tree of inputs curated from two places (each with its base_dir) gets the same video ids, so
    the same clip ids, pair keys and the choices seeded by them; two files of one tree get different ids."""
    for place in ("a", "b/deeper"):
        (tmp_path / place / "inputs" / "sub").mkdir(parents=True)
        for name in ("bikes.mp4", "sub/bikes.mp4"):
            shutil.copy(real_clip("bikes.mp4"), tmp_path / place / "inputs" / name)
    cfg = OmegaConf.create({"paths": ["inputs"], "manifest": None, "extensions": [".mp4"]})
    ids = {place: [(it["path"].split("/inputs/")[1], it["video_id"]) for it in list_inputs(cfg, str(tmp_path / place))]
           for place in ("a", "b/deeper")}
    assert ids["a"] == ids["b/deeper"]
    assert len({i for _, i in ids["a"]}) == 2
    item = list_inputs(cfg, str(tmp_path / "a"))[0]
    assert probe_one(item)["video_id"] == item["video_id"]  # the probe row keeps it
