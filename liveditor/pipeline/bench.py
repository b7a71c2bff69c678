"""Benchmark: a whole edit, frames in to frames out, ISA against dense attention; and how far the
release's ISA rules are from ours and from dense attention.

    python -m liveditor.pipeline.bench --json outputs/edit_bench.json        # H100/H200, ~6 min (estimate)
    python -m liveditor.pipeline.bench --configs isa+compile,isa+compile+reuse2,isa+compile+twopass --skip-rules  # plan reuse, CFG in two passes
    python -m liveditor.pipeline.bench --configs dense,isa --skip-rules     # eager rows
    python -m liveditor.pipeline.bench --steps 8 --configs isa+compile       # trimmed
    python -m liveditor.pipeline.bench --tiny                                # CPU smoke check, tiny sizes

**Edit** (issue 18): Wan2.1-1.3B size (30 layers, dim 1536, 12 heads x 128), 832x480x81 frames,
32 UniPC steps, shift 6, CFG 2.5 (the two branches as one batch-2 forward), random weights, with a
real-size Wan2.1 VAE (diffusers' `AutoencoderKLWan()` defaults, float32, `runtime.vae_dtype`) and a
real-size umT5-XXL encoder (24 layers, d_model 4096, 64 heads, d_ff 10240, vocab 256,384; bf16),
both random-initialised from their configs: nothing is downloaded. The tokenizer is the tiny BPE
of `liveditor.pipeline.tiny` (the encoder still runs its 512 positions). The timed span is one
`pipe(frames, prompt, ...)` call: a uint8 `[81, 480, 832, 3]` array in, uint8 frames out (text
encoding, VAE encode, 32 steps, VAE decode, conversion), after a warm-up of the DiT at this shape
(compilation, Triton autotuning) that is not timed.

Configs: `<attention>[+compile][+reuse<N>][+twopass][+release]`: `dense` (cuDNN SDPA self-attention) or `isa` (Triton
kernels); `+compile` runs each block's non-attention work through torch.compile (inductor;
`aot_eager` with `--tiny`); `+reuseN` reuses ISA plans over N steps (`sampling.isa_plan_reuse_steps`); `+twopass` runs the CFG branches as two forwards of batch 1
(`sampling.batch_cfg=false`) instead of one of batch 2; `+release` takes the release's ISA rules
(`model.dit.isa.compat=release`, on the Triton kernels on CUDA) instead of ours, e.g.
`--configs isa+compile,isa+compile+release --skip-rules` times the two rule sets in one run.
Every row runs under `sdpa_kernel` with cuDNN first in priority on CUDA, so the DiT's dense
self-attention and cross-attention use cuDNN, the strongest dense baseline on H100/H200 (the VAE's
and umT5's attention fall back to the other kernels, which cuDNN does not cover). Each command above is meant to fit in about 6 minutes on an H100 (an
estimate from the DiT forward's benchmark, docs/benchmarks.md: about 3.4 s per compiled dense step
and 1.6 s per compiled ISA step at batch 2, plus the VAE and the compilation); `--steps` trims.
With `--json` the file is rewritten after every row, so a run stopped by a time limit keeps the
rows it finished.

**Rules** (`--skip-rules` to leave out): one self-attention at LIVEditor's default 960x544x81 edit
(42,840 target tokens = 669 x 64 + 24, 42,840 source tokens, 40 heads x 128 as Wan2.2-A14B), the
same random float32 q, k, v for all three: dense softmax attention, ISA under our rules and under
the release's (`ISAConfig(compat="release")`), both through the exact torch statement, no gate.
Reported: relative L2 distance `||a - b|| / ||b||` and the largest absolute difference of each
pair. Random q, k give flat attention, so this measures the rules' effect on a worst case for
sparsity, not on a trained model's attention.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

DEFAULT_CONFIGS = "dense+compile,isa+compile"
PROMPT = "turn the sky purple and add snow on the street"

# umT5-XXL encoder sizes (Wan's text encoder, google/umt5-xxl).
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
UMT5_TINY = dict(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=8, relative_attention_max_distance=32,
                 pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
VAE_TINY = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, attn_scales=[],
                temperal_downsample=[False, True, True], latents_mean=[0.0] * 16, latents_std=[1.0] * 16)


@dataclass
class EditRow:
    config: str
    seconds: float  # the whole edit, frames in to frames out
    stages: dict = field(default_factory=dict)  # encode / denoise / decode seconds
    # None where not measured (no dense row with the same compile setting in the run; a CPU run's memory):
    # JSON null and "-" in the table, never a number.
    speedup_vs_dense: Optional[float] = None
    speedup_vs_first: Optional[float] = None  # against the run's first row (the in-run baseline of --configs)
    peak_gib: Optional[float] = None


@dataclass
class RuleRow:
    pair: str
    relative_l2: float
    max_abs: float


def parse_config(name: str) -> dict:
    """`isa+compile+reuse2` -> {"attention": "isa", "compile": True, "reuse": 2, "batch_cfg": True, "compat": "default"}."""
    parts = name.strip().split("+")
    if parts[0] not in ("isa", "dense"):
        raise ValueError(f"config {name!r} must start with isa or dense (e.g. isa+compile+reuse2)")
    out = {"attention": parts[0], "compile": False, "reuse": 1, "batch_cfg": True, "compat": "default"}
    for part in parts[1:]:
        if part == "compile":
            out["compile"] = True
        elif part == "twopass":
            out["batch_cfg"] = False
        elif part == "release" and parts[0] == "isa":
            out["compat"] = "release"
        elif part.startswith("reuse") and part[5:].isdigit() and int(part[5:]) >= 1:
            out["reuse"] = int(part[5:])
        else:
            raise ValueError(f"config {name!r}: unknown part {part!r} (compile, reuseN, twopass, release with isa)")
    return out


def _text_encoder(tiny: bool, device, dtype):
    import tempfile

    from transformers import UMT5Config, UMT5EncoderModel

    from liveditor.pipeline.components import TextEncoder
    from liveditor.pipeline.tiny import make_tiny_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = make_tiny_tokenizer(Path(tmp))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = UMT5EncoderModel(UMT5Config(**(UMT5_TINY if tiny else UMT5_XXL)))
    finally:
        torch.set_default_dtype(previous)
    return TextEncoder(model.to(device=device, dtype=dtype), tokenizer, text_len=16 if tiny else 512, device=device)


def _vae(tiny: bool, device, dtype):
    from diffusers import AutoencoderKLWan

    from liveditor.pipeline.components import WanVAE

    with torch.device(device):
        vae = AutoencoderKLWan(**VAE_TINY) if tiny else AutoencoderKLWan()
    return WanVAE(vae, device=device, dtype=dtype)


def _dit_config(tiny: bool, attention: str, compile_: bool, compat: str = "default"):
    from liveditor.models import DiTConfig

    if tiny:
        return DiTConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, freq_dim=32, text_len=16, text_dim=32,
                         attention=attention, isa=dict(block_size=16, context_keep_ratio=0.5, compat=compat), compile=False)
    return DiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, freq_dim=256, text_len=512, text_dim=4096,
                     attention=attention, isa=dict(compat=compat), compile=False)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def bench_edits(configs, steps: int, width: int, height: int, frames: int, device, tiny: bool, log=print,
                vae_dtype: torch.dtype = torch.float32, on_row=None) -> list[EditRow]:
    """Time one whole edit per config (see the module docstring); `on_row(rows)` after each one."""
    from omegaconf import OmegaConf

    from liveditor.models import build_editor
    from liveditor.pipeline.cli import compose_edit_config
    from liveditor.pipeline.editor import EditPipeline
    from liveditor.pipeline.sampling import Expert, sample_edit

    device = torch.device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    log(f"building the text encoder ({'tiny' if tiny else 'umT5-XXL'}, random) and the VAE ({'tiny' if tiny else 'Wan2.1'}, random)")
    text_encoder = _text_encoder(tiny, device, dtype)
    vae = _vae(tiny, device, vae_dtype)
    g = np.random.default_rng(0)
    clip = g.integers(0, 256, size=(frames, height, width, 3), dtype=np.uint8)
    compile_backend = "aot_eager" if tiny else "inductor"
    rows = []
    attention_ctx = contextlib.nullcontext  # a factory: a generator-based context manager is entered once only
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        # cuDNN first for the DiT (dense self-attention, cross-attention); the others stay allowed for
        # the VAE's single 384-wide head and umT5's position-biased attention, which cuDNN does not take.
        def attention_ctx():
            return sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                                SDPBackend.MATH], set_priority=True)
    for name in configs:
        spec = parse_config(name)
        cfg = compose_edit_config(["model=tiny" if tiny else "model=wan2.1-1.3b", "runtime.progress=false",
                                   f"sampling.isa_plan_reuse_steps={spec['reuse']}", f"model.dit.attention={spec['attention']}",
                                   f"sampling.batch_cfg={str(spec['batch_cfg']).lower()}", f"model.dit.isa.compat={spec['compat']}"])
        dit_cfg = _dit_config(tiny, spec["attention"], False, spec["compat"])
        model, _ = build_editor(dit_cfg, None, device=device, dtype=dtype)
        if spec["compile"]:
            model.compile_blocks(compile_backend)
        pipe = EditPipeline([Expert(model)], vae, text_encoder, OmegaConf.create(OmegaConf.to_container(cfg)), device)
        pipe._record_runtime()
        with attention_ctx():
            # Warm-up of the DiT at this shape, batch 2 (CFG): compilation and kernel autotuning.
            grid = vae.latent_shape(frames, height, width)
            noise = torch.randn((1, *grid), device=device)
            states = text_encoder.encode([PROMPT, ""], warn=False)
            t0 = time.perf_counter()
            sample_edit([Expert(model)], noise, noise, states[:1], states[1:], steps=min(2, spec["reuse"] + 1),
                        guidance_scale=2.5, isa_plan_reuse_steps=spec["reuse"], progress=False, batch_cfg=spec["batch_cfg"])
            _sync(device)
            log(f"{name}: warm-up {time.perf_counter() - t0:.1f} s")
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            out = pipe(clip, PROMPT, num_inference_steps=steps, guidance_scale=2.5, height=height, width=width,
                       num_frames=frames, output_type="np")
            _sync(device)
            seconds = time.perf_counter() - t0
        assert out.frames.shape == (1, frames, height, width, 3)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        rows.append(EditRow(name, seconds, {k: round(v, 3) for k, v in out.seconds.items()}, peak_gib=peak))
        log(f"{name}: {seconds:.2f} s ({', '.join(f'{k} {v:.2f}' for k, v in out.seconds.items())})")
        del pipe, model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        _speedups(rows)
        if on_row is not None:
            on_row(rows)
    return rows


def _speedups(rows: list[EditRow]) -> None:
    """Each row against the dense row with the same compile setting (CFG batched) in the run."""
    for row in rows:
        dense = next((r for r in rows if parse_config(r.config)["attention"] == "dense" and parse_config(r.config)["batch_cfg"]
                      and parse_config(r.config)["compile"] == parse_config(row.config)["compile"]), None)
        row.speedup_vs_dense = dense.seconds / row.seconds if dense is not None else None
        row.speedup_vs_first = rows[0].seconds / row.seconds


def _cell(value: Optional[float], fmt: str, suffix: str = "") -> str:
    """A table cell: the number, or "-" where nothing was measured."""
    return "-" if value is None else f"{value:{fmt}}{suffix}"


def _distance(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm()), float((a - b).abs().max())


def bench_rules(num_target: int, num_context: int, heads: int, head_dim: int, device, head_chunk: int = 8, log=print) -> list[RuleRow]:
    """Distances between dense attention, our ISA rules and the release's on the same random
    float32 q, k, v `[1, S, heads, head_dim]` (target first), computed `head_chunk` heads at a time."""
    from liveditor.isa import ISAConfig, isa_attention

    g = torch.Generator(device="cpu").manual_seed(0)
    S = num_target + num_context
    sums = {pair: [0.0, 0.0, 0.0] for pair in ("release vs ours", "release vs dense", "ours vs dense")}
    t0 = time.perf_counter()
    for h0 in range(0, heads, head_chunk):
        h = min(head_chunk, heads - h0)
        q, k, v = (torch.randn(1, S, h, head_dim, generator=g).to(device) for _ in range(3))
        dense = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        ours = isa_attention(q, k, v, num_target, ISAConfig(), backend="torch")
        release = isa_attention(q, k, v, num_target, ISAConfig(compat="release"), backend="torch")
        for pair, (a, b) in {"release vs ours": (release, ours), "release vs dense": (release, dense), "ours vs dense": (ours, dense)}.items():
            a64, b64 = a.double(), b.double()
            sums[pair][0] += float((a64 - b64).square().sum())
            sums[pair][1] += float(b64.square().sum())
            sums[pair][2] = max(sums[pair][2], float((a64 - b64).abs().max()))
        del q, k, v, dense, ours, release
    log(f"rules: {heads} heads in {time.perf_counter() - t0:.1f} s")
    return [RuleRow(pair, math.sqrt(d / n), m) for pair, (d, n, m) in sums.items()]


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m liveditor.pipeline.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=None, help=f"comma-separated edit configs (default {DEFAULT_CONFIGS}; none: '')")
    p.add_argument("--steps", type=int, default=None, help="sampler steps of each edit (default 32; 2 with --tiny)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--skip-rules", action="store_true", help="leave out the release-vs-ours rule distances")
    p.add_argument("--rules-heads", type=int, default=None, help="heads of the rule comparison (default 40; 2 with --tiny)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--vae-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="VAE dtype (runtime.vae_dtype; default float32, the edit config's default)")
    p.add_argument("--tiny", action="store_true", help="tiny random models and shapes: a CPU smoke check")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not args.tiny:
        print("no CUDA device: the full-size benchmark needs an H100/H200; use --tiny for a CPU smoke check", file=sys.stderr)
        return 2
    tiny = args.tiny
    configs = [c for c in (args.configs if args.configs is not None else DEFAULT_CONFIGS).split(",") if c.strip()]
    for c in configs:
        parse_config(c)
    steps = args.steps or (2 if tiny else 32)
    width, height, frames = args.width or (64 if tiny else 832), args.height or (32 if tiny else 480), args.frames or (5 if tiny else 81)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    vae_dtype = getattr(torch, args.vae_dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    rows, rules = [], []

    def save(*_):
        # Written after every row, so a run stopped by a time limit keeps what it measured.
        if not args.json:
            return
        from liveditor.files import atomic_write_text

        payload = {
            "device": name, "torch": torch.__version__, "commit": _commit(), "date": time.strftime("%Y-%m-%d"),
            "command": "python -m liveditor.pipeline.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
            "shape": {"width": width, "height": height, "frames": frames, "steps": steps, "guidance_scale": 2.5},
            "vae_dtype": args.vae_dtype,
            "edits": [asdict(r) for r in rows], "rules": [asdict(r) for r in rules],
        }
        atomic_write_text(args.json, json.dumps(payload, indent=2))

    if configs:
        rows = bench_edits(configs, steps, width, height, frames, device, tiny, log=log, vae_dtype=vae_dtype, on_row=save)
    if not args.skip_rules:
        # 960x544x81: latent 21x68x120, patches 1x2x2 -> 21*34*60 = 42,840 tokens per video.
        nt = 21 * 34 * 60 if not tiny else 200
        rules = bench_rules(nt, nt if not tiny else 600, args.rules_heads or (2 if tiny else 40), 128 if not tiny else 16, device,
                            log=log)
    print(f"device: {name}; torch {torch.__version__}; commit {_commit()}; {width}x{height}x{frames}, {steps} UniPC steps, CFG 2.5, "
          f"VAE {args.vae_dtype}")
    if rows:
        print(f"| config | edit s | encode s | denoise s | decode s | vs dense | vs {rows[0].config} | peak GiB |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            st = r.stages
            print(f"| {r.config} | {r.seconds:.2f} | {_cell(st.get('encode'), '.2f')} | {_cell(st.get('denoise'), '.2f')} | "
                  f"{_cell(st.get('decode'), '.2f')} | {_cell(r.speedup_vs_dense, '.2f', 'x')} | "
                  f"{_cell(r.speedup_vs_first, '.2f', 'x')} | {_cell(r.peak_gib, '.1f')} |")
    if rules:
        print("| rules | relative L2 | max abs |")
        print("|---|---|---|")
        for r in rules:
            print(f"| {r.pair} | {r.relative_l2:.4e} | {r.max_abs:.4e} |")
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
