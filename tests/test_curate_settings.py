"""A rerun with other settings into an existing out_dir (or a `-m` sweep of settings into one) never
mislabels the output: every stage's manifest records the settings that made it, and a run whose
settings differ from a stage's record is refused before any work (one line, exit 2, the changed keys
with both values and the fix), even when that stage is not selected; keys that only change how the
work runs (chunk sizes, threads, progress) are not compared. Deleting the stage's output as the
message says makes it again with the new settings, and the report then shows them."""

import json

import pyarrow.parquet as pq
import pytest
from test_curate_pipeline import FAST

from liveditor.data_pipeline.cli import main
from liveditor.data_pipeline.settings import recorded_settings
from liveditor.data_pipeline.synthetic_clips import synthetic_shots_video
from liveditor.video import write_video

PART = "partitions/part-00000-of-00001"
EARLY = "stages=[probe,shots,filters,report]"  # fast: no CLIP, no pairs


def _exit_code(call) -> int:
    try:
        call()
    except SystemExit as exc:
        return exc.code
    return 0


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("in")
    video = synthetic_shots_video(seed=3, num_shots=2, shot_frames=(30, 34), fade_probability=0.0)
    write_video(folder / "two_shots.mp4", video.frames, fps=video.fps)
    return folder


def _args(inputs, out, *extra):
    return [*FAST, f"input.paths=[{inputs}]", f"out_dir={out}", *extra]


def _funnel(out):
    return json.loads((out / "report" / "funnel.json").read_text())


def test_a_rerun_with_other_settings_is_refused_until_the_stage_is_redone(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert _exit_code(lambda: main(_args(inputs, out, EARLY, "filters.min_motion=0.5"))) == 0
    assert recorded_settings(out / PART / "filters.parquet")["filters.min_motion"] == 0.5
    assert _funnel(out)["thresholds"]["motion_score"]["min"] == 0.5
    resolved = (out / "resolved_config.yaml").read_text()
    report = (out / "report" / "funnel.json").read_bytes()
    capsys.readouterr()

    # The same out_dir with another floor: refused, for the stages that would run and for a report-only run.
    for stages in (EARLY, "stages=[report]"):
        assert _exit_code(lambda: main(_args(inputs, out, stages, "filters.min_motion=50"))) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert "filters output made with other settings" in err and "filters.min_motion: 0.5 there, 50 now" in err, err
        assert "give a new out_dir" in err and "partitions/*/{filters,clip_scores,pairs}.parquet" in err, err
        # nothing was redone or relabelled: the data, its config record and the report still agree
        assert (out / "resolved_config.yaml").read_text() == resolved
        assert (out / "report" / "funnel.json").read_bytes() == report

    # How the work runs is not a setting of the data.
    assert _exit_code(lambda: main(_args(inputs, out, EARLY, "filters.min_motion=0.5", "filters.chunk_size=3",
                                         "shots.detector.decode_threads=1"))) == 0

    # Deleting what the message names makes the stage again with the new value, and the report follows.
    (out / PART / "filters.parquet").unlink()
    assert _exit_code(lambda: main(_args(inputs, out, EARLY, "filters.min_motion=50"))) == 0
    assert recorded_settings(out / PART / "filters.parquet")["filters.min_motion"] == 50.0
    assert _funnel(out)["thresholds"]["motion_score"]["min"] == 50.0
    rows = pq.read_table(out / PART / "filters.parquet").to_pylist()
    assert rows and all(r["reject_reason"] for r in rows if r["motion_score"] is not None and r["motion_score"] < 50)


def test_a_sweep_of_settings_into_one_out_dir_is_refused(inputs, tmp_path, capsys):
    out = tmp_path / "swept"
    code = _exit_code(lambda: main(["-m", *_args(inputs, out, "stages=[probe,shots,filters]", "filters.min_motion=0.5,50")]))
    err = capsys.readouterr().err
    assert code == 2 and "filters.min_motion: 0.5 there, 50 now" in err, err
    assert recorded_settings(out / PART / "filters.parquet")["filters.min_motion"] == 0.5  # the first job's data, as labelled
    for name in ("shots", "probe"):
        assert recorded_settings(out / PART / f"{name}.parquet") is not None


def test_a_parallel_job_with_other_settings_never_writes_into_the_same_stage(tmp_path):
    """Two jobs of a parallel sweep may both pass the check before either wrote anything: the first to claim a
    stage's chunk folder (its stamp is created exclusively) wins, and the other stops before saving a chunk."""
    import pyarrow as pa
    from test_curate_pipeline import compose_cfg

    from liveditor.data_pipeline.settings import SettingsChanged, stage_settings
    from liveditor.data_pipeline.stage import Partition, StageContext, run_rowwise

    first, second = (compose_cfg(FAST + [f"filters.min_motion={v}"]) for v in (0.5, 50))
    chunks = tmp_path / PART / ".filters.chunks"
    chunks.mkdir(parents=True)
    (chunks / "layout.json").write_text(json.dumps({"chunk_size": 1, "inputs": 2, "settings": stage_settings(first, "filters")}))
    made = []
    with pytest.raises(SettingsChanged, match="filters.min_motion: 0.5 there, 50 now"):
        run_rowwise(StageContext(tmp_path, second, Partition(0, 1), False), "filters", [{"x": 1}, {"x": 2}],
                    lambda row: made.append(row) or [row], pa.schema([("x", pa.int64())]), 1)
    assert not list(chunks.glob("0*.parquet")) and not (tmp_path / PART / "filters.parquet").exists()
    # the job with the stamp's settings goes on
    run_rowwise(StageContext(tmp_path, first, Partition(0, 1), False), "filters", [{"x": 1}, {"x": 2}], lambda row: [row],
                pa.schema([("x", pa.int64())]), 1)
    assert recorded_settings(tmp_path / PART / "filters.parquet")["filters.min_motion"] == 0.5
