"""The DiT benchmark runs (CPU smoke size) and measures the shape the issue names."""

import json

from liveditor.models.bench import SIZES, forward_flops, latent_grid, main


def test_benchmark_shape_is_wan_1_3b_at_832x480x81():
    grid = latent_grid(832, 480, 81)
    assert grid == (21, 60, 104)
    cfg = SIZES["1.3b"]
    assert (cfg.dim, cfg.ffn_dim, cfg.num_heads, cfg.head_dim, cfg.num_layers) == (1536, 8960, 12, 128, 30)
    tokens = grid[0] * (grid[1] // 2) * (grid[2] // 2)
    assert (tokens, 2 * tokens) == (32_760, 65_520)
    flops = forward_flops(cfg, tokens, tokens)
    assert flops["self_attention"] == 30 * 4 * 65_520**2 * 1536
    assert latent_grid(960, 544, 81) == (21, 68, 120)  # Wan2.2-14B shape: 42,840 tokens per video


def test_tiny_benchmark_runs_and_writes_json(tmp_path, capsys):
    assert main(["--tiny", "--json", str(tmp_path / "b.json")]) == 0
    record = json.loads((tmp_path / "b.json").read_text())
    assert [r["backend"] for r in record["rows"]] == ["dense", "isa", "isa+plan"]
    assert all(r["ms"] > 0 for r in record["rows"]) and record["rows"][0]["speedup_vs_dense"] == 1.0
    assert record["shape"]["tokens_in_context"] == 2 * 3 * 4 * 6
    assert "vs dense" in capsys.readouterr().out
