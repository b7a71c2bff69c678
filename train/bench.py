"""Training-step benchmark of the editor DiT: ISA against dense attention, same weights, same batch.

    python -m liveditor.train.bench                       # Wan2.1-1.3B, 832x480x81 in context (65,520 tokens)
    python -m liveditor.train.bench --compile both        # eager and compiled rows (model.dit.compile=true) in one run
    python -m liveditor.train.bench --model wan2.2-a14b --frames 81 --height 544 --width 960
    python -m liveditor.train.bench --write-synthetic-shards DIR   # random latent shards for strategy smoke runs

One step is what `liveditor-train` does per batch on one GPU: the flow-matching loss of
`EditorTrainingModule` under bf16 autocast (Lightning's `bf16-mixed`: float32 parameters, AdamW
states and gradients), gradient checkpointing per block, backward, gradient clipping at 1.0, a fused
AdamW step. Random weights and latents: speed does not depend on their values, except through ISA's
routing, whose work is fixed by its ratios. The two attentions alternate (`--rounds`) so that clocks
and memory state are shared; each round times `--steps` steps after `--warmup`. `--compile`
adds rows with each block's non-attention work compiled by Inductor, as `model.dit.compile=true`
trains (`EditorDiT.compile_blocks`; the attention stays eager between the compiled regions); the
first warm-up step of a compiled row compiles its forward and backward.

FLOPs are those of `liveditor.train.flops` (3x the forward, dense attention counted for both, so
ISA's MFU is dense-equivalent); MFU divides by the GPU's datasheet bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def model_config(name: str, attention: str = "isa"):
    from importlib.resources import files

    from omegaconf import OmegaConf

    from liveditor.models import DiTConfig

    node = OmegaConf.load(str(files("liveditor.configs") / "model" / f"{name}.yaml"))
    return DiTConfig.from_dict(dict(OmegaConf.to_container(node.dit, resolve=True), attention=attention))


def latent_grid(frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Wan2.1 VAE latents of a video: `(1 + (T-1)/4, H/8, W/8)`."""
    return (frames - 1) // 4 + 1, height // 8, width // 8


def set_attention(model, attention: str) -> None:
    for block in model.blocks:
        block.self_attn.attention = attention


def variants(attentions, compile_mode: str) -> list[tuple[str, str, bool]]:
    """The rows of a run: `(name, attention, compiled)`; `compile_mode` is none, inductor or both."""
    modes = {"none": (False,), "inductor": (True,), "both": (False, True)}[compile_mode]
    return [(f"{a}+compile" if c else a, a, c) for c in modes for a in attentions]


def run(args) -> dict:
    import torch

    from liveditor.train.flops import dit_train_flops, peak_tflops, tokens_of
    from liveditor.train.flow import TimestepConfig
    from liveditor.train.module import EditorTrainingModule, OptimConfig, TrainOptions

    device = torch.device("cuda")
    cfg = model_config(args.model)
    options = TrainOptions(gradient_checkpointing=not args.no_checkpointing, text_dropout=0.1,
                           timesteps=TimestepConfig(shift=5.0), optim=OptimConfig(lr=1e-5))
    module = EditorTrainingModule(cfg, options).to(device)
    params = [p for p in module.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)
    f, h, w = latent_grid(args.frames, args.height, args.width)
    g = torch.Generator().manual_seed(0)
    batch = {
        "target_latents": torch.randn(args.batch, cfg.in_dim, f, h, w, generator=g).to(device, torch.bfloat16),
        "source_latents": torch.randn(args.batch, cfg.in_dim, f, h, w, generator=g).to(device, torch.bfloat16),
        "text": torch.randn(args.batch, args.text_tokens, cfg.text_dim, generator=g).to(device, torch.bfloat16),
    }
    nt = tokens_of(cfg, batch["target_latents"].shape)
    flops = args.batch * dit_train_flops(cfg, nt, nt)
    peak = peak_tflops(torch.cuda.get_device_name())

    def step(i: int) -> float:
        batch["position"] = {"epoch": 0, "worker": 0, "seq": i}
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = module.compute_loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    rows_of = variants(args.attention, args.compile)
    times = {name: [] for name, _, _ in rows_of}
    memory = {name: 0.0 for name, _, _ in rows_of}
    for _ in range(args.rounds):
        for name, attention, compiled in rows_of:
            set_attention(module.model, attention)
            module.model.compile_blocks("inductor" if compiled else None)
            for i in range(args.warmup):
                step(i)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            for i in range(args.steps):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                step(args.warmup + i)
                torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t0)
            memory[name] = max(memory[name], torch.cuda.max_memory_allocated() / 2**30)
    rows = {}
    for name, _, _ in rows_of:
        t = statistics.median(times[name])
        rows[name] = {"step_s": t, "step_s_all": times[name], "tokens_per_s": args.batch * 2 * nt / t,
                      "mfu": flops / t / (peak * 1e12) if peak else None, "peak_memory_gib": memory[name]}
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "model": args.model,
              "video": [args.frames, args.height, args.width], "tokens_in_context": 2 * nt, "batch": args.batch,
              "gradient_checkpointing": not args.no_checkpointing, "train_flops_per_step": flops, "peak_tflops": peak, "rows": rows}
    if "isa" in rows and "dense" in rows:
        result["speedup_isa_vs_dense"] = rows["dense"]["step_s"] / rows["isa"]["step_s"]
        result["memory_ratio_isa_vs_dense"] = rows["isa"]["peak_memory_gib"] / rows["dense"]["peak_memory_gib"]
    if "isa+compile" in rows and "dense+compile" in rows:
        result["speedup_isa_vs_dense_compiled"] = rows["dense+compile"]["step_s"] / rows["isa+compile"]["step_s"]
        result["memory_ratio_isa_vs_dense_compiled"] = (rows["isa+compile"]["peak_memory_gib"]
                                                        / rows["dense+compile"]["peak_memory_gib"])
    return result


def write_synthetic_shards(folder: Path, shards: int = 4, per_shard: int = 4, text_dim: int = 32, grid=(3, 8, 12)) -> Path:
    """Latent shards of random tensors in the documented format (for strategy smoke runs)."""
    import torch
    from safetensors.torch import save

    from liveditor.files import atomic_write_json
    from liveditor.train.precompute import TEXT_DEFAULTS_NAME
    from liveditor.train.shards import encode_latents, sha256_file, write_tar

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    entries = []
    for s in range(shards):
        samples = []
        for i in range(per_shard):
            key = f"synthetic{s:03d}{i:03d}"
            meta = {"key": key, "instruction": "synthetic", "latents": {"target": [16, *grid]}}
            samples.append((key, {"json": json.dumps(meta, sort_keys=True).encode(), "latents.safetensors": encode_latents(
                torch.randn(16, *grid, generator=g), torch.randn(16, *grid, generator=g), torch.randn(7, text_dim, generator=g))}))
        name = f"edit-{s:06d}.tar"
        write_tar(folder / name, samples)
        entries.append({"name": name, "samples": per_shard, "bytes": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)})
    (folder / TEXT_DEFAULTS_NAME).write_bytes(save({"empty": torch.zeros(1, text_dim, dtype=torch.bfloat16),
                                                     "negative": torch.zeros(3, text_dim, dtype=torch.bfloat16)}))
    atomic_write_json(folder / "index.json", {"format": "webdataset", "kind": "latents", "shards": entries, "num_shards": shards,
                                              "num_samples": shards * per_shard, "text_defaults": TEXT_DEFAULTS_NAME})
    return folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m liveditor.train.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="wan2.1-1.3b", help="a configs/model name (default wan2.1-1.3b)")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--text-tokens", type=int, default=64, help="real prompt tokens (the DiT pads to text_len)")
    p.add_argument("--attention", nargs="+", default=["isa", "dense"], choices=["isa", "dense"])
    p.add_argument("--steps", type=int, default=3, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--no-checkpointing", action="store_true")
    p.add_argument("--compile", default="none", choices=["none", "inductor", "both"],
                   help="rows eager (none), with the blocks' regions compiled (inductor), or both")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--write-synthetic-shards", type=Path, default=None, metavar="DIR")
    args = p.parse_args(argv)
    if args.write_synthetic_shards:
        print(write_synthetic_shards(args.write_synthetic_shards))
        return 0
    result = run(args)
    print(f"{result['device']}  {args.model}  {args.width}x{args.height}x{args.frames}  {result['tokens_in_context']} tokens in context, "
          f"batch {args.batch}, bf16-mixed, checkpointing {result['gradient_checkpointing']}")
    print(f"{'attention':>13} {'step s':>8} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>9}")
    for name, row in result["rows"].items():
        mfu = f"{row['mfu']:.3f}" if row["mfu"] is not None else "-"
        print(f"{name:>13} {row['step_s']:8.3f} {row['tokens_per_s']:10.0f} {mfu:>6} {row['peak_memory_gib']:9.1f}")
    for key, label in (("", "eager"), ("_compiled", "compiled")):
        if f"speedup_isa_vs_dense{key}" in result:
            print(f"ISA vs dense ({label}): {result[f'speedup_isa_vs_dense{key}']:.2f}x faster per step, "
                  f"peak memory x{result[f'memory_ratio_isa_vs_dense{key}']:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
