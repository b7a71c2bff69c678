"""Benchmark: one editor-DiT forward, self-attention through ISA vs dense cuDNN SDPA.

    python -m liveditor.models.bench                  # Wan2.1-1.3B size, 832x480x81 in context, bf16, CUDA
    python -m liveditor.models.bench --json out.json  # also write the rows as JSON
    python -m liveditor.models.bench --tiny           # CPU smoke check at a tiny size
    python -m liveditor.models.bench --size 14b --width 960 --height 544   # Wan2.2-14B shape, 85,680 tokens
    python -m liveditor.models.bench --compile inductor   # every row with the blocks' non-attention work compiled
    python -m liveditor.models.bench --profile            # also the CUDA kernels of one forward per row

Shape (DESIGN.md, "Testing and measuring"): an 832x480 video of 81 frames is a 21x60x104 latent
(VAE stride 4x8x8); patches of 1x2x2 give 21*30*52 = 32,760 tokens per video and 65,520 with the
source in context. Weights are random (Wan's initialisation; speed does not depend on values).

Every run enters `sdpa_kernel([CUDNN_ATTENTION])`, so the cross-attention uses cuDNN in both rows
and the dense self-attention is cuDNN SDPA, the strongest dense baseline on H100/H200. Rows:
`dense` (cuDNN SDPA), `isa` (routing planned in the forward, the cost of a refresh step) and
`isa+plan` (plans from the previous step reused, the steps in between when
`sampling.isa_plan_reuse_steps > 1`). Time is the median of CUDA-event timings after warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from liveditor.dtypes import dtype_name
from liveditor.models.config import DiTConfig
from liveditor.models.loading import build_editor

WAN21_1_3B = DiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, freq_dim=256, text_len=512, text_dim=4096)
WAN_14B = DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, freq_dim=256, text_len=512, text_dim=4096)
SIZES = {"1.3b": WAN21_1_3B, "14b": WAN_14B}
TINY = DiTConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, freq_dim=32, text_len=16, text_dim=32)


@dataclass
class Row:
    backend: str
    ms: float
    tflops: float
    peak_gib: float
    speedup_vs_dense: float = float("nan")


def latent_grid(width: int, height: int, frames: int) -> tuple[int, int, int]:
    """Wan2.1 VAE latent `(F, H, W)` of a video: stride 4 in time (causal, 1 + (T-1)/4), 8 in space."""
    return 1 + (frames - 1) // 4, height // 8, width // 8


def forward_flops(cfg: DiTConfig, num_target: int, num_context: int) -> dict:
    """FLOPs of one forward with dense self-attention (2 per multiply-add), by part.

    Per block and token: q, k, v, o (4 * 2 * dim^2), cross-attention q and o (2 * 2 * dim^2), MLP
    (2 * 2 * dim * ffn_dim); per block: cross-attention k, v over the text (2 * 2 * dim^2 * text_len),
    self-attention scores and values (2 * 2 * S^2 * dim), cross-attention scores and values
    (2 * 2 * S * text_len * dim). Embeddings and the head are left out (under 0.1%).
    """
    S, d, L = num_target + num_context, cfg.dim, cfg.text_len
    linear = cfg.num_layers * (S * (4 * 2 * d * d + 2 * 2 * d * d + 2 * 2 * d * cfg.ffn_dim) + 2 * 2 * d * d * L)
    self_attention = cfg.num_layers * 2 * 2 * S * S * d
    cross_attention = cfg.num_layers * 2 * 2 * S * L * d
    return {"linear": linear, "self_attention": self_attention, "cross_attention": cross_attention,
            "total": linear + self_attention + cross_attention}


def _sdpa_context(device: torch.device):
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.CUDNN_ATTENTION])


def _time_ms(fn, device: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def run(cfg: DiTConfig, grid: tuple[int, int, int], device: torch.device, dtype: torch.dtype,
        backends=("dense", "isa", "isa+plan"), warmup: int = 2, iters: int = 5, seed: int = 0,
        compile_backend: Optional[str] = None, profile: bool = False) -> tuple[list[Row], dict]:
    """Time one forward per backend; returns rows and the shape description.

    `compile_backend` (e.g. "inductor") compiles every block's non-attention work in every row
    (`EditorDiT.compile_blocks`); the warm-up calls absorb the compilation. `profile` prints the
    CUDA kernels of one forward per row, heaviest first.
    """
    torch.manual_seed(seed)
    model, _ = build_editor(cfg.replace(attention="isa"), device=device, dtype=dtype)
    model.compile_blocks(compile_backend)
    F_, H_, W_ = grid
    latents = torch.randn(1, cfg.in_dim, F_, H_, W_, device=device)
    source = torch.randn(1, cfg.in_dim, F_, H_, W_, device=device)
    text = torch.randn(1, cfg.text_len, cfg.text_dim, device=device, dtype=dtype)
    timestep = torch.tensor([500.0], device=device)
    pt, ph, pw = cfg.patch_size
    num_target = (F_ // pt) * (H_ // ph) * (W_ // pw)
    flops = forward_flops(cfg, num_target, num_target)
    rows = []
    for name in backends:
        attention = "dense" if name == "dense" else "isa"
        for block in model.blocks:
            block.self_attn.attention = attention
        plans = None
        if name == "isa+plan":
            with torch.inference_mode(), _sdpa_context(device):
                _, plans = model(latents, timestep, text, source, return_plans=True)

        def step():
            with torch.inference_mode(), _sdpa_context(device):
                return model(latents, timestep, text, source, plans=plans)

        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        ms = _time_ms(step, device, warmup, iters)
        if profile:
            _print_profile(step, f"{name}{' + ' + compile_backend if compile_backend else ''}")
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        # TFLOP/s against the dense FLOP count for every row: the rate of the same work done.
        rows.append(Row(name, ms, flops["total"] / (ms * 1e-3) / 1e12, peak))
        del plans
    dense = next((r.ms for r in rows if r.backend == "dense"), None)
    for r in rows:
        r.speedup_vs_dense = dense / r.ms if dense else float("nan")
    shape = {
        "compile": compile_backend,
        "latent_grid": list(grid), "tokens_per_video": num_target, "tokens_in_context": 2 * num_target,
        "dim": cfg.dim, "heads": cfg.num_heads, "head_dim": cfg.head_dim, "layers": cfg.num_layers,
        "dtype": dtype_name(dtype), "isa": cfg.isa.to_dict(), "dense_flops": flops,
    }
    return rows, shape


def _print_profile(step, title: str, top: int = 15) -> None:
    """CUDA time per kernel name over one call of `step`, heaviest first."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.self_device_time_total for e in events)
    print(f"profile of one forward, {title}: {total / 1e3:.1f} ms of kernels")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:top]:
        print(f"  {e.self_device_time_total / 1e3:9.1f} ms {e.count:6d}x  {e.key[:100]}")


def print_table(rows: list[Row], shape: dict, device_name: str, file=None) -> None:
    file = file or sys.stdout
    compiled = f", block regions compiled ({shape['compile']})" if shape.get("compile") else ", eager"
    print(f"editor DiT forward on {device_name}{compiled}: {shape['layers']} layers, dim {shape['dim']}, "
          f"{shape['heads']}x{shape['head_dim']} heads, {shape['tokens_in_context']:,} tokens in context "
          f"({shape['tokens_per_video']:,} per video, latent {shape['latent_grid']}), {shape['dtype']}", file=file)
    print(f"{'backend':<10} {'ms':>10} {'TFLOP/s*':>9} {'peak GiB':>9} {'vs dense':>9}", file=file)
    for r in rows:
        print(f"{r.backend:<10} {r.ms:>10.1f} {r.tflops:>9.1f} {r.peak_gib:>9.2f} {r.speedup_vs_dense:>8.2f}x", file=file)
    print(f"* dense-equivalent: {shape['dense_flops']['total'] / 1e12:.1f} TFLOP per forward "
          f"({shape['dense_flops']['self_attention'] / 1e12:.1f} in self-attention) over the measured time", file=file)


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m liveditor.models.bench", description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny model and shape on CPU (smoke check)")
    p.add_argument("--size", choices=sorted(SIZES), default="1.3b", help="1.3b: Wan2.1-1.3B; 14b: Wan2.1-14B / a Wan2.2-A14B expert")
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--layers", type=int, default=None, help="override the layer count (default: 30, Wan2.1-1.3B)")
    p.add_argument("--backends", nargs="+", default=["dense", "isa", "isa+plan"], choices=["dense", "isa", "isa+plan"])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--compile", default=None, metavar="BACKEND",
                   help="torch.compile each block's non-attention work in every row (e.g. inductor)")
    p.add_argument("--profile", action="store_true", help="print the CUDA kernels of one forward per row")
    p.add_argument("--json", default=None, help="write rows and shape to this path")
    args = p.parse_args(argv)

    if args.tiny:
        cfg, device, dtype = TINY, torch.device("cpu"), torch.float32
        grid = (3, 8, 12)
        cfg = cfg.replace(isa=cfg.isa.__class__(block_size=16, context_keep_ratio=0.5, full_query_ratio=0.5, exact_kv_ratio=0.25))
        args.warmup, args.iters = min(args.warmup, 1), min(args.iters, 2)
    else:
        if not torch.cuda.is_available():
            print("liveditor.models.bench: needs a CUDA device (use --tiny for a CPU smoke check)", file=sys.stderr)
            return 2
        cfg, device, dtype = SIZES[args.size], torch.device("cuda"), torch.bfloat16
        grid = latent_grid(args.width, args.height, args.frames)
    if args.layers:
        cfg = cfg.replace(num_layers=args.layers)
    rows, shape = run(cfg, grid, device, dtype, args.backends, args.warmup, args.iters,
                      compile_backend=args.compile, profile=args.profile)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print_table(rows, shape, device_name)
    if args.json:
        record = {"device": device_name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                  "command": "python -m liveditor.models.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "shape": shape, "rows": [asdict(r) for r in rows]}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
