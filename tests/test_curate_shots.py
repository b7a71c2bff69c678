"""Shot detection: our detector against ground truth on generated clips and against PySceneDetect
on real footage, clip splitting, and the numpy colour conversion that stands in for OpenCV."""

import builtins

import numpy as np
import pytest

from liveditor.data_pipeline.bench_shots import boundary_f1
from liveditor.data_pipeline.shots import (
    ShotDetectorConfig, content_scores, detect_shots, detect_shots_pyscenedetect, rgb_to_hsv_u8, shots_from_frames,
    split_into_clips,
)
from liveditor.data_pipeline.synthetic_clips import real_clip, real_footage_video, synthetic_shots_video
from liveditor.video import read_video, write_video


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generated_cuts_and_fades_found_within_one_frame(tmp_path, seed):
    video = synthetic_shots_video(seed=seed, num_shots=5, fade_probability=0.5)
    path = write_video(tmp_path / "gen.mp4", video.frames, fps=video.fps)  # through a real encode and decode
    shots = detect_shots(str(path))
    assert shots.num_frames == len(video.frames)
    assert boundary_f1(shots.shot_boundaries, video.boundaries)["f1"] == 1.0, (shots.shot_boundaries, video.boundaries)
    assert boundary_f1(shots.cuts, video.cuts)["f1"] == 1.0
    # Fade frames are excluded from the content ranges, and ranges never cross a boundary.
    for lo, hi in shots.ranges:
        assert not any(lo < b < hi for b in video.boundaries)
        assert video.frames[lo:hi].reshape(hi - lo, -1).mean(axis=1).min() > 12


def test_real_footage_cuts_match_pyscenedetect():
    path = str(real_clip("bikes.mp4"))
    ours, theirs = detect_shots(path), detect_shots_pyscenedetect(path)
    assert len(theirs.cuts) >= 4  # bikes.mp4 has several cuts
    assert boundary_f1(ours.cuts, theirs.cuts)["f1"] >= 0.95


def test_real_footage_composite_ground_truth():
    sources = [read_video(real_clip(n)).frames for n in ("bigbuckbunny.mp4", "carphone_pristine.mp4")]
    video = real_footage_video(sources, seed=3, num_shots=5, fade_probability=0.4, height=144, width=256)
    shots = shots_from_frames(video.frames, video.fps)
    assert boundary_f1(shots.shot_boundaries, video.boundaries)["f1"] == 1.0


def test_static_and_flash_frames_are_not_cuts():
    still = np.full((40, 36, 64, 3), 120, np.uint8)
    flash = still.copy()
    flash[20] = 255  # one white frame: two large changes in a row, not a new shot
    assert shots_from_frames(still, 25.0).cuts == []
    assert shots_from_frames(flash, 25.0, ShotDetectorConfig(min_shot_frames=15)).shot_boundaries in ([], [20], [21])


def test_numpy_hsv_matches_opencv(monkeypatch):
    rng = np.random.default_rng(0)
    frames = (rng.random((3, 16, 24, 3)) * 255).astype(np.uint8)
    with_cv2 = rgb_to_hsv_u8(frames).astype(int)
    real_import = builtins.__import__

    def no_cv2(name, *args, **kwargs):
        if name == "cv2":
            raise ImportError("cv2 hidden")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cv2)
    without = rgb_to_hsv_u8(frames).astype(int)
    assert np.abs(with_cv2 - without).max() <= 1
    assert content_scores(frames).shape == (3,)


def test_split_into_clips_min_max_and_forced_split():
    fps = 10.0
    clips = split_into_clips([(0, 15), (20, 60), (60, 160)], fps, min_seconds=2.0, max_seconds=7.0, split_seconds=5.0)
    assert clips[0] == (0, 15, "shot_too_short")  # kept as a reject row, not dropped
    assert clips[1] == (20, 60, "")
    forced = [c for c in clips if c[0] >= 60]
    assert len(forced) == 2 and all(b - a <= 50 for a, b, _ in forced)  # 10 s shot -> two 5 s pieces
    assert forced[0][0] == 60 and forced[-1][1] == 160


def test_boundary_f1_counts_each_truth_once():
    assert boundary_f1([10, 11], [10])["f1"] == pytest.approx(2 / 3)
    assert boundary_f1([12], [10])["f1"] == 0.0
    assert boundary_f1([], [])["f1"] == 1.0


def test_thumbnails_do_not_depend_on_decoder_threads(tmp_path):
    """Slice or frame threading and any thread count give the same thumbnails; slices are counted."""
    import av

    from liveditor.video import _h264_slices, read_video_thumbnails

    video = synthetic_shots_video(seed=3, num_shots=3, fade_probability=0.5)
    path = write_video(tmp_path / "gen.mp4", video.frames, fps=video.fps)
    one = read_video_thumbnails(path, max_width=48, threads=1)
    assert one.frames.shape[0] == len(video.frames) and one.frames.shape[2] <= 48
    for threads in (2, 3):
        assert np.array_equal(read_video_thumbnails(path, max_width=48, threads=threads).frames, one.frames)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packet = next(p for p in container.demux(stream) if p.size)
        assert _h264_slices(stream.codec_context, bytes(packet)) >= 1


def test_decode_threads_must_be_positive():
    from liveditor.data_pipeline.shots import ShotDetectorConfig

    with pytest.raises(ValueError, match="shots.detector.decode_threads"):
        ShotDetectorConfig(decode_threads=0)
    assert ShotDetectorConfig(decode_threads=2).decode_threads == 2
