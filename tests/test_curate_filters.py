"""Filters: both decoders (pyav: seek + scale in the decoder, the default; decord) read the clip's
sampled frames and score it alike; an unknown decoder is an error naming the key."""

import pytest
from test_curate_pipeline import compose_cfg

from liveditor.data_pipeline.filters import analysis_size, filter_clip
from liveditor.data_pipeline.synthetic_clips import real_clip


def _clip(name, start, end, fps, w, h):
    return {"path": str(real_clip(name)), "start_frame": start, "end_frame": end, "fps": fps, "width": w, "height": h,
            "duration_s": (end - start) / fps, "reject_reason": None}


@pytest.mark.parametrize("clip", [("bigbuckbunny.mp4", 60, 132, 25.0, 1280, 720), ("bikes.mp4", 150, 250, 25.0, 640, 272)])
def test_decoders_score_alike(clip):
    fcfg = compose_cfg([]).filters
    assert fcfg.decoder == "pyav"
    ours = filter_clip(_clip(*clip), fcfg)
    fcfg.decoder = "decord"
    other = filter_clip(_clip(*clip), fcfg)
    assert ours["reject_reason"] is None and other["reject_reason"] is None
    assert ours["motion_score"] == pytest.approx(other["motion_score"], rel=0.1)
    assert ours["sharpness"] == pytest.approx(other["sharpness"], rel=0.3)


def test_unknown_decoder_names_the_key():
    fcfg = compose_cfg(["filters.decoder=opencv"]).filters
    with pytest.raises(ValueError, match="filters.decoder"):
        filter_clip(_clip("bikes.mp4", 0, 100, 25.0, 640, 272), fcfg)
    assert analysis_size(1280, 720, 256) == (455, 256) and analysis_size(200, 100, 256) == (200, 100)
