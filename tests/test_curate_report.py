"""The curation report: thresholds, kept vs rejected, thumbnails of shipped pairs read from the shards,
a per-source table, the no-samples banner; and the page rendered in headless Chromium, where the
images must load (a page whose images are missing renders with ~100x fewer colours)."""

import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from test_curate_pipeline import FAST, compose_cfg

from liveditor.data_pipeline.cli import run_curation
from liveditor.data_pipeline.synthetic_clips import real_clip

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]


def render(html_path, png_path, size=(1200, 1600)):
    """Screenshot `html_path` with headless Chromium; returns the image as `uint8` `[H, W, 3]`."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "the report test renders the page in Chromium: install it (apt-get install -y chromium)"
    done = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--window-size={size[0]},{size[1]}", f"--screenshot={png_path}",
                           f"file://{html_path}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and png_path.exists(), done.stderr[-2000:]
    return np.asarray(Image.open(png_path).convert("RGB"))


def _colours(img):
    return len(np.unique(img.reshape(-1, 3), axis=0))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    (root / "in").mkdir()
    (root / "in" / "bikes.mp4").write_bytes(real_clip("bikes.mp4").read_bytes())
    (root / "in" / "notes.mp4").write_text("not a video")
    out = run_curation(compose_cfg(FAST + [f"input.paths=[{root / 'in'}]", f"out_dir={root / 'out'}", "filters.min_motion=12.0",
                                           "report.thumbnails=3"]))
    return out


def test_report_content(run):
    out = run
    report = json.loads((out / "report" / "funnel.json").read_text())
    assert report["thresholds"]["motion_score"] == {"min": 12.0, "max": 60.0}
    assert report["thresholds"]["structure_consistency"] == {"min": 0.3}
    assert "clip_text_target" not in report["thresholds"]  # FAST turns it off; a random CLIP would too
    html = (out / "report" / "index.html").read_text()
    assert "no-samples" not in html
    # Kept and rejected apart: the filters' motion floor rejects one of bikes' clips and keeps another.
    stages = {s["stage"]: s for s in report["funnel"]}
    assert stages["filters"]["rejected_here"].get("motion_static", 0) >= 1 and stages["filters"]["kept"] >= 1
    assert "motion_score &mdash; kept" in html and "thresholds: max 60, min 12" in html
    thumbs = sorted((out / "report" / "thumbs").glob("*.jpg"))
    shipped = json.loads((out / "shards" / "index.json").read_text())["num_samples"]
    assert len(thumbs) == min(3, shipped) > 0
    for t in thumbs:
        assert f"src='thumbs/{t.name}'" in html
        w, h = Image.open(t).size
        assert h == 120 and w > 2 * 120  # source | target side by side
    # Per source: both inputs, the broken one with its reason.
    assert "bikes.mp4</code></td><td>ok</td>" in html and "notes.mp4</code></td><td>not_a_video</td>" in html


def test_report_renders_in_chromium_with_its_images(run, tmp_path):
    good = render(run / "report" / "index.html", tmp_path / "good.png")
    broken_dir = tmp_path / "broken"
    shutil.copytree(run / "report", broken_dir)
    shutil.rmtree(broken_dir / "thumbs")
    for p in broken_dir.glob("*.png"):
        p.unlink()
    broken = render(broken_dir / "index.html", tmp_path / "broken.png")
    assert _colours(good) > 10 * _colours(broken), (_colours(good), _colours(broken))


def test_no_samples_banner_renders(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bikes.mp4").write_bytes(real_clip("bikes.mp4").read_bytes())
    out = run_curation(compose_cfg(FAST + [f"input.paths=[{tmp_path / 'in'}]", f"out_dir={tmp_path / 'out'}",
                                           "filters.min_motion=1000", "filters.max_motion=2000"]))
    assert json.loads((out / "shards" / "index.json").read_text())["num_samples"] == 0
    img = render(out / "report" / "index.html", tmp_path / "empty.png", size=(1000, 600))
    banner = np.all(np.abs(img.astype(int) - [176, 0, 32]) <= 2, axis=-1)  # the banner's red, #b00020
    assert banner.sum() > 20000  # a wide red bar near the top, not a stray pixel
    assert not list((out / "report").glob("thumbs/*.jpg"))



def test_rejected_rows_are_split_by_reason_in_every_histogram(run):
    """funnel.json and the captions give each histogram's rejected rows per reason, matching the manifests."""
    from collections import Counter

    import pyarrow.parquet as pq

    report = json.loads((run / "report" / "funnel.json").read_text())
    html = (run / "report" / "index.html").read_text()
    part = run / "partitions" / "part-00000-of-00001"
    assert report["histograms"]
    for h in report["histograms"]:
        stage, column = h["stage"], h["column"]
        rows = pq.read_table(part / f"{stage}.parquet").to_pylist()
        want = Counter(r["reject_reason"] for r in rows if r["reject_reason"] and r.get(column) is not None)
        assert h["rejected_by_reason"] == dict(want) and h["rejected"] == sum(want.values()), (stage, column)
        if want:
            shown = ", ".join(f"{r}: {n}" for r, n in h["rejected_by_reason"].items())
            assert f"{stage}: {column} &mdash; kept {h['kept']}, rejected {h['rejected']} ({shown})" in html


def test_two_reject_reasons_are_two_colours(tmp_path):
    """Rows rejected for two reasons are drawn apart: one colour each (and one legend entry each), not one
    orange block."""
    from liveditor.data_pipeline import report
    from liveditor.data_pipeline.filters import SCHEMA
    from liveditor.data_pipeline.manifest import write_manifest
    from liveditor.data_pipeline.stage import StageContext

    part = tmp_path / "partitions" / "part-00000-of-00001"
    rows = ([{"clip_id": f"k{i}", "motion_score": 20.0 + i} for i in range(4)]
            + [{"clip_id": f"s{i}", "motion_score": 2.0 + i, "reject_reason": "motion_static", "reject_stage": "filters"} for i in range(3)]
            + [{"clip_id": "b0", "motion_score": 40.0, "reject_reason": "blurry", "reject_stage": "filters"}])
    write_manifest([dict(r, path="/videos/a.mp4") for r in rows], part / "filters.parquet", SCHEMA)
    report.run(StageContext(tmp_path, compose_cfg(FAST), None, False))
    [h] = [h for h in json.loads((tmp_path / "report" / "funnel.json").read_text())["histograms"] if h["column"] == "motion_score"]
    assert (h["kept"], h["rejected"], h["rejected_by_reason"]) == (4, 4, {"motion_static": 3, "blurry": 1})
    img = np.asarray(Image.open(tmp_path / "report" / "filters-motion_score.png").convert("RGB")).reshape(-1, 3)
    for colour in report.REASON_COLOURS[:2]:  # the most frequent reason's colour, then the next one's
        rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(img.astype(int) - rgb).max(axis=1) <= 2).sum() > 50, colour
