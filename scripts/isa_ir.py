"""Compile ISA's Triton kernels for an H100 (sm_90) on a machine without a GPU and report what the
compiler made of their loops: which loads are prefetched (`cp.async`, software-pipelined) and which
stall (`tt.load` inside a loop), how many copies each loop's `cp.async` waits leave in flight (0
means a step also waits for the copies meant for later steps, so loads run only one step ahead),
shared memory and programs per SM, registers from ptxas, and (`--sass`) the instructions per loop
step. No device time needed.

    .venv/bin/python scripts/isa_ir.py [--kernel taylor|taylor-fused-merge|merge|dq|dkdv|centroid] [--warps 4] [--stages 3]
                                       [--exact-stages 5] [--sass] [--ttgir out.ttgir] [--check]

`taylor`, `taylor-fused-merge` and `merge` are the forward kernel as launched for those roles
(`kernels/isa_fwd.py`; the second with the merge programs appended, as the serial order launches it
where the Gluon Taylor kernel does not run); `dq`, `dkdv` and `centroid` the backward kernels
(`kernels/isa_bwd.py`). Needs Triton's CUDA backend (ptxas ships with it) and TRITON_INTERPRET
unset. The device's Triton is 3.6; to compile with that
version here, `pip download triton==3.6.0` and put it first on PYTHONPATH. Read the output as a lead,
not as a timing.

Runtime specialisation is reproduced by hand: pointers and strides are marked divisible by 16, as
Triton marks them at launch for the usual contiguous tensors. Without those marks the compiler
cannot prove 16-byte alignment and pipelines nothing, which misleads (it misled this script's
author twice).
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

# Pointer arguments that are not bf16 tensors (the rest are q, k, v, dO, outputs and block means).
FP32_POINTERS = {"KV_BIAS", "GATE", "OUT_C", "INIT_LSE", "LSE", "DELTA", "DK_PART", "DV_PART"}
I32_POINTERS = {"QUERY_BLOCKS", "EXACT_BLOCKS", "KV_BLOCKS", "FULL_QUERY_BLOCKS", "FULL_ATTENDS", "CSR_OFFSETS",
                "CSR_QUERY_BLOCKS", "INIT_ROW", "TAYLOR_QUERY_BLOCKS", "MERGE_QUERY_BLOCKS", "MERGE_EXACT_BLOCKS"}
INT_ARGS = {"H", "NE", "NC", "NF", "NT", "NQ", "NE_MERGE"}  # upper-case scalar arguments
NOT_STRIDES = {"scale", "seq_len"}

KERNELS = ("taylor", "taylor-fused-merge", "merge", "dq", "dkdv", "centroid")


def _kernel_and_constants(kernel: str, exact_stages: int):
    common = dict(BLOCK=64, HEAD_DIM=128, DOT_PRECISION="tf32", UPCAST=False)
    if kernel in ("taylor", "taylor-fused-merge", "merge"):
        from liveditor.kernels.isa_fwd import isa_fwd_kernel as fn

        return fn, dict(common, HAS_GATE=True, HAS_CENTROIDS=kernel != "merge", STORE_LSE=True,
                        HAS_MERGE=kernel != "taylor", EXACT_STAGES=exact_stages)
    from liveditor.kernels import isa_bwd

    fn = {"dq": isa_bwd.isa_bwd_dq_kernel, "dkdv": isa_bwd.isa_bwd_dkdv_kernel,
          "centroid": isa_bwd.isa_bwd_centroid_kernel}[kernel]
    return fn, dict(common, HAS_INIT=False, BLOCK_C=64)


def _arg_type(name: str, const: dict) -> str:
    if name in const:
        return "constexpr"
    if name in INT_ARGS or not name.isupper():
        return "fp32" if name == "scale" else "i32"
    return "*fp32" if name in FP32_POINTERS else "*i32" if name in I32_POINTERS else "*bf16"


def compile_sm90(kernel: str = "taylor", warps: int = 4, stages: int = 3, exact_stages: int = 5):
    """`kernel` (one of KERNELS) compiled for sm_90, with the constants of its launch."""
    fn, const = _kernel_and_constants(kernel, exact_stages)
    names = list(fn.arg_names)
    sig = {n: _arg_type(n, const) for n in names}
    aligned = [n for n in names if sig[n].startswith("*") or (sig[n] == "i32" and not n.isupper() and n not in NOT_STRIDES
                                                              and n.startswith("s") and "_" in n)]
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(n),): v for n, v in const.items() if n in names},
                    attrs={(names.index(n),): [["tt.divisibility", 16]] for n in aligned})
    return triton.compile(src, target=GPUTarget("cuda", 90, 64), options=dict(num_warps=warps, num_stages=stages))


SMEM_PER_SM = 233472  # bytes of shared memory per SM on an H100 (228 KiB)
SMEM_RESERVED_PER_CTA = 1024  # bytes the driver reserves per resident program


def ctas_per_sm(shared: int) -> int:
    """Programs per SM that fit in an H100's shared memory. The Taylor launch needs two per SM to hide
    latency; one byte over the line halves that."""
    return SMEM_PER_SM // (shared + SMEM_RESERVED_PER_CTA)


def _loop_lines(ttgir: str):
    """`(loop number or 0 outside loops, line)` for every line of the TritonGPU IR."""
    loops, open_at = 0, []  # indentation of each enclosing scf.for
    for line in ttgir.splitlines():
        indent = len(line) - len(line.lstrip())
        if open_at and line.lstrip().startswith("}") and indent == open_at[-1]:
            open_at.pop()
            continue
        if "scf.for" in line:
            loops += 1
            open_at.append(indent)
            continue
        yield (loops if open_at else 0), line


def loop_loads(ttgir: str):
    """`[(loop number, value name, prefetched?)]` for every global load inside an `scf.for`."""
    out = []
    for loop, line in _loop_lines(ttgir):
        if not loop:
            continue
        m = re.search(r"%(\w+) = (tt\.load|ttg\.async_copy_global_to_local|tt\.descriptor_load) %", line)
        if m:
            out.append((loop, m.group(1), "async" in m.group(2)))
    return out


def loop_waits(ttgir: str):
    """`[(loop number, copies left in flight)]` for every `cp.async` wait inside an `scf.for`. A wait
    that leaves none in flight (0) also waits for the copies meant for later steps: the loop's loads
    are then issued only one step ahead of their use."""
    out = []
    for loop, line in _loop_lines(ttgir):
        m = re.search(r"ttg\.async_wait .*\{num = (\d+)", line)
        if m and loop:
            out.append((loop, int(m.group(1))))
    return out


def sass_loops(cubin: bytes):
    """`[(instruction count, Counter of opcodes)]` for each innermost loop of the compiled kernel's
    SASS, in program order: the instructions between a label and the backward branch to it,
    leaving out spin-waits on barriers (two instructions) and retry blocks placed after the exit."""
    import collections
    import tempfile

    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([str(nvdisasm), "-c", f.name], capture_output=True, text=True, check=True).stdout
    ins, labels = [], {}
    for line in sass.splitlines():
        m = re.match(r"\s*(\.L_x_\d+):", line)
        if m:
            labels[m.group(1)] = len(ins)
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(.*?)\s*;", line)
        if m:
            ins.append(m.group(1))
    exit_at = max(i for i, t in enumerate(ins) if re.search(r"\bEXIT\b", t))
    ranges = []
    for i, t in enumerate(ins):
        m = re.search(r"BRA\s+`?\(?(\.L_x_\d+)", t)
        if m and labels.get(m.group(1), i) < i - 4 and i < exit_at:
            ranges.append((labels[m.group(1)], i))
    inner = [r for r in ranges if not any(o != r and r[0] <= o[0] and o[1] <= r[1] for o in ranges)]
    opcode = lambda t: re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0]
    return [(b - a + 1, collections.Counter(opcode(t) for t in ins[a:b + 1])) for a, b in sorted(inner)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", choices=KERNELS, default="taylor")
    ap.add_argument("--warps", type=int, default=None, help="default: as launched")
    ap.add_argument("--stages", type=int, default=None, help="default: as launched")
    ap.add_argument("--exact-stages", type=int, default=None, help="forward only; default: as launched")
    ap.add_argument("--ttgir", type=Path, default=None, help="write the TritonGPU IR here")
    ap.add_argument("--sass", action="store_true", help="also count the SASS instructions of each loop's step")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if a tile load inside a loop is not prefetched, a Taylor loop waits for every "
                         "copy in flight, or fewer than two programs fit per SM")
    args = ap.parse_args(argv)
    from liveditor.kernels.isa_fwd import DEFAULT_TUNING

    forward = args.kernel in ("taylor", "taylor-fused-merge", "merge")
    args.warps = args.warps or (DEFAULT_TUNING.num_warps if forward else 4)
    args.stages = args.stages or (DEFAULT_TUNING.num_stages if forward else 2)
    # As `launch_isa_fwd` does: the merge role's exact loop has one block, so it is not deepened.
    args.exact_stages = args.exact_stages or (DEFAULT_TUNING.exact_stages if args.kernel.startswith("taylor") else args.stages)
    compiled = compile_sm90(args.kernel, args.warps, args.stages, args.exact_stages)
    ttgir = compiled.asm["ttgir"]
    if args.ttgir:
        args.ttgir.write_text(ttgir)
    print(f"{args.kernel} (triton {triton.__version__}): {args.warps} warps, {args.stages} stages"
          f"{f' ({args.exact_stages} in the exact loop)' if forward else ''}, shared memory {compiled.metadata.shared} bytes")
    ctas = ctas_per_sm(compiled.metadata.shared)
    print(f"  {ctas} programs per SM fit in shared memory (H100: {SMEM_PER_SM} bytes, {SMEM_RESERVED_PER_CTA} reserved per program)")
    loads, waits = loop_loads(ttgir), loop_waits(ttgir)
    for loop, name, prefetched in loads:
        print(f"  loop {loop}: {name:<16} {'prefetched' if prefetched else 'STALLS (plain load in the loop)'}")
    for loop, left in waits:
        print(f"  loop {loop}: cp.async wait leaves {left} copies in flight{'' if left else ' (WAITS FOR LATER STEPS TOO)'}")
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if ptxas.exists():
        ptx = Path("/tmp/isa_ir.ptx")
        ptx.write_text(compiled.asm["ptx"])
        res = subprocess.run([str(ptxas), "-arch=sm_90a", "-v", str(ptx), "-o", "/dev/null"], capture_output=True, text=True)
        print(*[line.strip() for line in res.stderr.splitlines() if "registers" in line or "spill" in line], sep="\n")
    if args.sass:
        for n, (count, ops) in enumerate(sass_loops(compiled.asm["cubin"]), 1):
            top = ", ".join(f"{op} {c}" for op, c in ops.most_common(10))
            print(f"  SASS loop {n}: {count} instructions per step ({top})")
    if args.check:
        # Tiles are the [64, 128] operands; the backward loops still load their block index (one
        # scalar) synchronously, which is allowed here.
        tiles = [(n, ok) for _, n, ok in loads if not re.match(r"(kb|qb|cb)_", n)]
        if not (tiles and all(ok for _, ok in tiles)):
            print("check failed: a tile load inside a loop is not prefetched", file=sys.stderr)
            return 1
        if ctas < 2:
            print("check failed: fewer than two programs per SM fit in shared memory", file=sys.stderr)
            return 1
        if args.kernel.startswith("taylor") and (any(left == 0 for _, left in waits)
                                        or not all(ok for _, n, ok in loads)):
            print("check failed: a Taylor loop waits for every copy in flight at each step, or loads its "
                  "block index synchronously", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
