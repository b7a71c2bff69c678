"""Peak host memory of building a (14B-shaped) editor DiT from a sharded checkpoint, per rank.

    python -m liveditor.models.bench_build --layers 4 --dir /tmp/bench_build      # writes, then measures

Writes random weights in Wan's layout as sharded safetensors with an index (the shape of
`configs/model/wan2.1-14b.yaml`, `--layers` of its 40 blocks), then builds the model from them in a
fresh process per rank (`--world` ranks on CPU, gloo) and reports each way's peak resident memory
(`VmHWM` of rank 0) next to its size:

- `before`: what every rank did before issue 30: the model built eagerly in float32 (Wan's random
  initialisation), then the whole state dict read and copied in.
- `whole`: `build_editor` now: meta device, then each tensor read from its shard into its parameter
  (the whole float32 model per rank: DDP, ZeRO-2).
- `partitions`: `read_rank_partitions`: the rank's ZeRO-3 partition of every tensor, no DeepSpeed.
- `zero3`: `build_editor_partitioned` inside `deepspeed.zero.Init` (parameters in `--zero-dtype`,
  bf16 as Lightning's bf16-mixed ZeRO-3 makes them), then `load_zero3_partitions`; needs deepspeed.

Per block and for the rest (embeddings, head) the byte counts are exact, so a figure measured at
a few blocks scales to 40 by adding the per-block bytes (reported as `per_layer_bytes`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

MODES = ("before", "whole", "partitions", "zero3")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def dit_config(layers: int):
    """`configs/model/wan2.1-14b.yaml`'s DiT with `layers` blocks."""
    import yaml

    from liveditor.models import DiTConfig

    root = Path(__file__).resolve().parents[2]
    node = yaml.safe_load((root / "configs" / "model" / "wan2.1-14b.yaml").read_text())["dit"]
    node["num_layers"] = layers
    return DiTConfig.from_dict(node)


def write_checkpoint(cfg, folder: Path, shard_bytes: int, seed: int = 0) -> Path:
    """Random float32 weights of `cfg` in Wan's layout (no editor parameters), sharded like Wan's
    release (`diffusion_pytorch_model-0000i-of-0000n.safetensors` + index), one shard in memory at a time."""
    from safetensors.torch import save_file

    from liveditor.models.loading import build_editor, is_editor_key

    meta, _ = build_editor(cfg, device="meta")
    shapes = {k: tuple(v.shape) for k, v in meta.state_dict().items() if not is_editor_key(k)}
    groups, size = [[]], 0
    for k in shapes:
        n = math.prod(shapes[k]) * 4
        if groups[-1] and size + n > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(k)
        size += n
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    weight_map = {}
    for i, keys in enumerate(groups):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({k: torch.randn(shapes[k], generator=g) * 0.02 for k in keys}, str(folder / name))
        weight_map.update({k: name for k in keys})
        print(f"wrote {name} ({i + 1}/{len(groups)})", file=sys.stderr, flush=True)
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    total = sum(math.prod(s) * 4 for s in shapes.values())
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    return index


def _worker(mode: str, rank: int, world: int, layers: int, index: str, zero_dtype: str) -> dict:
    import torch.distributed as dist

    from liveditor.models.loading import build_editor, read_state_dict

    cfg = dit_config(layers)
    if mode == "zero3":
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    elif world > 1:
        dist.init_process_group("gloo")
    base_kb = _status_kb("VmRSS")
    t0 = time.perf_counter()
    kept = 0
    if mode == "before":
        from liveditor.models.dit import EditorDiT

        model = EditorDiT(cfg).keep_fp32_parameters_()
        state, _ = read_state_dict(index)
        with torch.no_grad():
            params = dict(model.named_parameters())
            for k, v in state.items():
                params[k].copy_(v)
            model.init_editor_parameters()
        del state
        kept, read = sum(p.numel() * p.element_size() for p in model.parameters()), None
    elif mode == "whole":
        model, report = build_editor(cfg, index)
        kept, read = sum(p.numel() * p.element_size() for p in model.parameters()), report.bytes_read
    elif mode == "partitions":
        from liveditor.models.sharded import read_rank_partitions

        meta, _ = build_editor(cfg, device="meta")
        parts, report = read_rank_partitions(meta, index, rank, world)
        kept, read = sum(t.numel() * t.element_size() for t in parts.values()), report.bytes_read
    else:
        import deepspeed

        from liveditor.models.sharded import build_editor_partitioned

        config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}, "bf16": {"enabled": zero_dtype == "bf16"}}
        with deepspeed.zero.Init(config_dict_or_path=config, dtype=DTYPES[zero_dtype]):
            model, report = build_editor_partitioned(cfg, index)
        kept, read = sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in model.parameters()), report.bytes_read
    seconds = time.perf_counter() - t0
    if world > 1:
        dist.barrier()
    return {"mode": mode, "rank": rank, "world": world, "layers": layers, "peak_bytes": _status_kb("VmHWM") * 1024,
            "base_bytes": base_kb * 1024, "kept_bytes": kept, "read_bytes": read, "seconds": round(seconds, 1)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(mode: str, world: int, layers: int, index: Path, zero_dtype: str = "bf16") -> list[dict]:
    """Run `world` fresh rank processes of `mode`; their result rows (rank 0 first)."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                   LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
        cmd = [sys.executable, "-m", "liveditor.models.bench_build", "--worker", mode, "--rank", str(rank), "--world", str(world),
               "--layers", str(layers), "--index", str(index), "--zero-dtype", zero_dtype]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    rows = []
    for rank, p in enumerate(procs):
        out, err = p.communicate()
        if p.returncode:
            raise RuntimeError(f"{mode} rank {rank}/{world} failed (exit {p.returncode}):\n{err[-3000:]}")
        rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def model_bytes(cfg) -> tuple[int, int]:
    """(float32 bytes of everything but the blocks, float32 bytes of one block) of the editor DiT."""
    from liveditor.models.loading import build_editor

    meta, _ = build_editor(cfg, device="meta")
    block = sum(p.numel() for p in meta.blocks[0].parameters()) * 4
    return sum(p.numel() for p in meta.parameters()) * 4 - block * len(meta.blocks), block


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4, help="blocks of the 14B shape to build (40: the whole 14B)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/liveditor_bench_build"), help="where the random checkpoint is written")
    parser.add_argument("--shard-gb", type=float, default=2.0, help="checkpoint shard size")
    parser.add_argument("--modes", default="before,whole,partitions,zero3")
    parser.add_argument("--worlds", default="1,2", help="world sizes of the partitioned modes")
    parser.add_argument("--zero-dtype", choices=sorted(DTYPES), default="bf16", help="parameter dtype under deepspeed.zero.Init")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.rank, args.world, args.layers, args.index, args.zero_dtype)), flush=True)
        return 0
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        print(f"bench_build: --modes takes {', '.join(MODES)}, got {', '.join(bad)}", file=sys.stderr)
        return 2
    if args.layers < 1:
        print(f"bench_build: --layers must be >= 1, got {args.layers}", file=sys.stderr)
        return 2
    if "zero3" in modes:
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            print("bench_build: mode zero3 needs deepspeed (pip install '.[deepspeed]'); leave it out of --modes", file=sys.stderr)
            return 2
    cfg = dit_config(args.layers)
    index = args.dir / f"l{args.layers}" / "diffusion_pytorch_model.safetensors.index.json"
    if not index.exists():
        index = write_checkpoint(cfg, index.parent, int(args.shard_gb * 2**30))
    rest, block = model_bytes(cfg)
    print(json.dumps({"layers": args.layers, "fp32_bytes": rest + block * args.layers, "per_layer_bytes": block, "rest_bytes": rest}), flush=True)
    for mode in modes:
        for world in ([1] if mode in ("before", "whole") else [int(w) for w in args.worlds.split(",")]):
            row = measure(mode, world, args.layers, index, args.zero_dtype)[0]
            print(json.dumps(row), flush=True)
            print(f"{mode:10s} world {world}: rank 0 peak {row['peak_bytes'] / 2**30:6.2f} GiB (after imports {row['base_bytes'] / 2**30:.2f}), "
                  f"keeps {row['kept_bytes'] / 2**30:6.2f} GiB, read {(row['read_bytes'] or 0) / 2**30:6.2f} GiB, {row['seconds']} s",
                  file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
