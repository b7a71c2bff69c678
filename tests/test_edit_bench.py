"""The end-to-end edit benchmark's CPU path at tiny sizes: every row is a real edit, the JSON is
written, and the rule distances are computed on inputs whose lengths are not multiples of 64."""

import json

import pytest

from liveditor.pipeline.bench import main, parse_config


def test_tiny_benchmark_runs_every_kind_of_row_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench" / "edit.json"
    assert main(["--tiny", "--configs", "dense,isa+twopass,isa+compile+reuse2", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| isa+compile+reuse2 |" in table and "| release vs ours |" in table
    result = json.loads(out.read_text())
    assert [r["config"] for r in result["edits"]] == ["dense", "isa+twopass", "isa+compile+reuse2"]
    for row in result["edits"]:
        assert row["seconds"] > 0 and set(row["stages"]) == {"encode", "denoise", "decode"}
    assert result["edits"][0]["speedup_vs_dense"] == 1.0
    # No compiled dense row in this run: the compiled row has no ratio to dense (null, "-"), and a CPU run
    # measures no GPU memory; neither is shown as a number.
    assert result["edits"][2]["speedup_vs_dense"] is None and all(r["peak_gib"] is None for r in result["edits"])
    row = next(line for line in table.splitlines() if line.startswith("| isa+compile+reuse2 |")).split("|")
    assert row[6].strip() == "-" and row[8].strip() == "-" and "nan" not in table
    assert result["shape"] == {"width": 64, "height": 32, "frames": 5, "steps": 2, "guidance_scale": 2.5}
    rules = {r["pair"]: r for r in result["rules"]}
    assert set(rules) == {"release vs ours", "release vs dense", "ours vs dense"}
    # 200 target tokens (3 x 64 + 8): the two rule sets block differently, so their outputs differ.
    assert rules["release vs ours"]["relative_l2"] > 1e-3
    assert all(0 < r["relative_l2"] < 10 for r in rules.values())


def test_config_names():
    assert parse_config("isa+compile+reuse2") == {"attention": "isa", "compile": True, "reuse": 2, "batch_cfg": True,
                                                  "compat": "default"}
    assert parse_config("dense+twopass") == {"attention": "dense", "compile": False, "reuse": 1, "batch_cfg": False,
                                             "compat": "default"}
    assert parse_config("isa+compile+release")["compat"] == "release"
    for bad in ("flash", "isa+fast", "isa+reuse0", "dense+release"):
        with pytest.raises(ValueError, match="config"):
            parse_config(bad)
