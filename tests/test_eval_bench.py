"""The scoring throughput benchmark's CPU path at a tiny size (the GPU run is `python -m liveditor.eval.bench`)."""

import json

from liveditor.eval.bench import METRICS, main


def test_bench_scores_items_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    r = main(["--device", "cpu", "--model-size", "tiny", "--items", "2", "--frames", "5", "--size", "64x48", "--json", str(out)])
    assert r["items_scored"] == 2 and r["frames"] == 5 and r["size"] == [64, 48]
    assert set(r["seconds_per_metric"]) == set(METRICS) and all(s > 0 for s in r["seconds_per_metric"].values())
    assert json.loads(out.read_text())["items_per_s"] > 0
    assert "items/s" in capsys.readouterr().out
