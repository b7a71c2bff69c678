"""Compile the ISA forward kernel for an H100 (sm_90) on a machine without a GPU and report what
the compiler made of its loops: which loads are prefetched (`cp.async`, software-pipelined) and which
stall (`tt.load` inside a loop), shared memory, and registers from ptxas. No device time needed.

    .venv/bin/python scripts/isa_fwd_ir.py [--role taylor|merge] [--warps 4] [--stages 3] [--ttgir out.ttgir] [--check]

Needs Triton's CUDA backend (ptxas ships with it) and TRITON_INTERPRET unset. The local Triton may
be newer than the device's (3.8 here, 3.6 on the H100 machines), so read it as a lead.

Runtime specialisation is reproduced by hand: pointers and the row strides of q, k, v, out and the
block-mean tables are marked divisible by 16, as Triton marks them at launch for the usual
contiguous tensors. Without those marks the compiler cannot prove 16-byte alignment and pipelines
nothing, which misleads (seen while writing this script).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

POINTER_TYPES = {
    "Q": "*bf16", "K": "*bf16", "V": "*bf16", "O": "*bf16", "KV_K_MEAN": "*bf16", "KV_V_MEAN": "*bf16",
    "QUERY_BLOCKS": "*i32", "EXACT_BLOCKS": "*i32", "KV_BIAS": "*fp32", "GATE": "*fp32", "OUT_C": "*fp32",
    "INIT_O": "*bf16", "INIT_LSE": "*fp32", "LSE": "*fp32",
}
ALIGNED_STRIDES = ("sq_", "sk_", "sv_", "so_", "skm_", "svm_", "soc_", "sio_")


def compile_sm90(role: str = "taylor", warps: int = 4, stages: int = 3):
    """The kernel compiled for sm_90 as it is launched for `role` ("taylor" or "merge")."""
    from liveditor.kernels.isa_fwd import isa_fwd_kernel as kernel

    names = list(kernel.arg_names)
    const = dict(BLOCK=64, HEAD_DIM=128, HAS_GATE=True, HAS_INIT=role == "merge",
                 HAS_CENTROIDS=role == "taylor", STORE_LSE=True, DOT_PRECISION="tf32", UPCAST=False)
    missing = [n for n in names if n.isupper() and len(n) > 2 and n not in const and n not in POINTER_TYPES]
    if missing:
        raise SystemExit(f"isa_fwd_kernel has arguments this script does not know: {missing}; add them to POINTER_TYPES or const")
    sig = {n: "constexpr" if n in const else POINTER_TYPES.get(n, "fp32" if n == "scale" else "i32") for n in names}
    aligned = [n for n in names if sig[n].startswith("*") or n.startswith(ALIGNED_STRIDES)]
    src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(n),): v for n, v in const.items() if n in names},
                    attrs={(names.index(n),): [["tt.divisibility", 16]] for n in aligned})
    return triton.compile(src, target=GPUTarget("cuda", 90, 64), options=dict(num_warps=warps, num_stages=stages))


def loop_loads(ttgir: str):
    """`[(loop number, value name, prefetched?)]` for every global load inside an `scf.for`."""
    out, loops, open_at = [], 0, []  # indentation of each enclosing scf.for
    for line in ttgir.splitlines():
        indent = len(line) - len(line.lstrip())
        if open_at and line.lstrip().startswith("}") and indent == open_at[-1]:
            open_at.pop()
            continue
        if "scf.for" in line:
            loops += 1
            open_at.append(indent)
            continue
        m = re.search(r"%(\w+) = (tt\.load|ttg\.async_copy_global_to_local) %", line)
        if m and open_at:
            out.append((loops, m.group(1), "async" in m.group(2)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", choices=["taylor", "merge"], default="taylor")
    ap.add_argument("--warps", type=int, default=4)
    ap.add_argument("--stages", type=int, default=3)
    ap.add_argument("--ttgir", type=Path, default=None, help="write the TritonGPU IR here")
    ap.add_argument("--check", action="store_true", help="exit 1 if a load inside a loop is not prefetched")
    args = ap.parse_args(argv)
    compiled = compile_sm90(args.role, args.warps, args.stages)
    ttgir = compiled.asm["ttgir"]
    if args.ttgir:
        args.ttgir.write_text(ttgir)
    print(f"role {args.role}, {args.warps} warps, {args.stages} stages: shared memory {compiled.metadata.shared} bytes")
    loads = loop_loads(ttgir)
    for loop, name, prefetched in loads:
        print(f"  loop {loop}: {name:<16} {'prefetched (cp.async)' if prefetched else 'STALLS (plain load in the loop)'}")
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if ptxas.exists():
        ptx = Path("/tmp/isa_fwd_ir.ptx")
        ptx.write_text(compiled.asm["ptx"])
        res = subprocess.run([str(ptxas), "-arch=sm_90a", "-v", str(ptx), "-o", "/dev/null"], capture_output=True, text=True)
        print(*[line.strip() for line in res.stderr.splitlines() if "registers" in line or "spill" in line], sep="\n")
    if args.check and not (loads and all(prefetched for _, _, prefetched in loads)):
        print("check failed: a load inside a loop is not prefetched", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
