"""ISA kernel benchmark: `python -m liveditor.kernels.bench` on an H100/H200.

Times, at the attention shapes of DESIGN.md ("Testing and measuring"), with CUDA events (median of
`triton.testing.do_bench` after warm-up):
  * dense SDPA with the cuDNN backend and with the flash backend (the baselines),
  * ISA forward with the plan made inside the call ("plan included"), for each full-path route,
  * the plan alone, and the routed forward alone given a plan,
  * cuDNN and ISA (plan included) once more, timed in alternation (`interleaved`), whose per-round
    ratio is the headline figure (a GPU's clocks drift by several percent during a run),
and reports speed-ups against cuDNN plus achieved TFLOP/s of the routed work (FLOPs counted by
`routed_flops`, below). `--compat default release` (the default) adds the release's ISA rules
(`ISAConfig(compat="release")`, `kernels/release.py`) to the same run: their plan, their forward
given the plan and plan included, and a third callable in the interleaved timing, so their ratios
to cuDNN and to the default rules come from the same rounds. `--backward` adds forward+backward
timings and peak memory, `--sweep` times the Triton forward kernel's launch tunings (`SWEEP`),
`--timeline` shows one forward's kernels on the GPU's clock, `--selection` the plan's top-k by sort
and by bisection (`kernels/select.py`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass

import torch

SHAPES = {
    # name: (H, num_target, num_context), B=1, D=128
    "wan2.1-1.3b-480p": (12, 32760, 32760),
    "wan2.2-14b-544p": (40, 42840, 42840),
}


def dense_flops(B: int, H: int, S: int, D: int) -> float:
    """Forward FLOPs of dense attention: QK^T and PV, 2 FLOPs per multiply-add each."""
    return 4.0 * B * H * S * S * D


def routed_flops(plan, D: int) -> float:
    """Forward FLOPs ISA's routed work actually does (QK^T and PV over every attended column).

    Full query blocks attend every KV-set token; a Taylor query block attends the tokens of its
    exact blocks plus one column per centroid. Token counts are exact (partial blocks included).
    """
    g = plan.geometry
    blen = g.block_len.double()
    kv_tokens = blen[plan.kv_blocks.long()].sum(-1)  # [B, H]
    full_q = blen[plan.full_query_blocks.long()].sum(-1)
    taylor_q = blen[plan.taylor_query_blocks.long()]  # [B, H, nt]
    exact_tokens = blen[plan.taylor_exact_kv_blocks.long()].sum(-1)  # [B, H, nt]
    centroids = plan.kv_blocks.shape[-1] - plan.taylor_exact_kv_blocks.shape[-1]
    cols = (full_q * kv_tokens).sum() + (taylor_q * (exact_tokens + centroids)).sum()
    return float(4.0 * D * cols)


def release_routed_flops(plan, D: int, block_size: int = 64) -> float:
    """`routed_flops` for a `ReleasePlan`: full query blocks attend the KV sequence's `Tkv` rows
    (a kept last block's padding included); a Taylor query block the `block_size` rows of each exact
    KV block (padding included) plus one column per other KV block. Query rows are the blocks' real
    tokens."""
    bs = block_size
    S = plan.num_target + plan.num_context
    nb = -(-S // bs)
    rows = torch.full((nb,), float(bs), dtype=torch.float64)
    rows[-1] = S - (nb - 1) * bs
    tkv = plan.num_target + plan.kept_context_blocks.shape[-1] * bs
    nkv = -(-tkv // bs)
    n_exact = plan.taylor_exact_kv_blocks.shape[-1]
    full_q = rows[plan.full_query_blocks.long().cpu()].sum(-1)  # [B, H]
    taylor_q = rows[plan.taylor_query_blocks.long().cpu()].sum(-1)
    cols = (full_q * tkv).sum() + (taylor_q * (n_exact * bs + nkv - n_exact)).sum()
    return float(4.0 * D * cols)


@dataclass
class Row:
    shape: str
    name: str
    ms: float
    tflops: float | None = None
    speedup_vs_cudnn: float | None = None
    peak_gib: float | None = None


def _bench(fn, warmup_ms=200, rep_ms=1000):
    import triton

    return triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")


def interleaved(fns: dict, rounds: int = 15) -> dict:
    """Median CUDA-event times (ms) of several callables timed in turn, round after round, with L2
    flushed before each call. A GPU's clocks drift by several percent over a long run (seen on the
    H100: cuDNN SDPA from 44.6 to 46.6 ms within a minute); alternating the candidates exposes them
    to the same drift, so their ratio is steadier than that of two separate `do_bench` runs.
    Returns `{name: median_ms}` plus `{"ratio[a/b]": median of per-round ratios}` for each pair."""
    flush = torch.empty(int(256e6 // 4), dtype=torch.int32, device="cuda")
    for fn in fns.values():
        fn()
    torch.cuda.synchronize()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        events = []
        for name, fn in fns.items():
            flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events.append((name, start, end))
        torch.cuda.synchronize()
        for name, start, end in events:
            times[name].append(start.elapsed_time(end))
    med = lambda xs: sorted(xs)[len(xs) // 2]
    out = {name: med(ts) for name, ts in times.items()}
    names = list(fns)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            out[f"ratio[{a}/{b}]"] = med([x / y for x, y in zip(times[a], times[b])])
    return out


def _inputs(B: int, S: int, H: int, D: int, dtype):
    """The benchmarks' random inputs, seeded: `(generator, q, k, v, gate)`, q/k/v `[B, S, H, D]`
    and a per-token gate `[B, S, 1, 1]` in [0, 0.25); the generator continues the same stream."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=dtype, generator=gen) for _ in range(3))
    gate = torch.rand(B, S, 1, 1, device="cuda", dtype=dtype, generator=gen) * 0.25
    return gen, q, k, v, gate


def _sdpa(backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kind = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend]

    def run(q, k, v):
        with sdpa_kernel([kind]):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    return run


def bench_forward(name, H, Nt, Ns, D=128, B=1, dtype=torch.bfloat16, full_paths=("sdpa", "triton"), rep_ms=1000,
                  compats=("default",)):
    """Rows of the forward at one shape (module docstring); `compats`: the rule sets timed beside
    cuDNN, "default" and/or "release"."""
    from liveditor.isa import ISAConfig, plan_isa
    from liveditor.isa.plan import coarse_attention
    from liveditor.kernels.isa_function import isa_attention_triton, isa_forward
    from liveditor.kernels.release import release_forward

    S = Nt + Ns
    cfg = ISAConfig()
    _, q, k, v, gate = _inputs(B, S, H, D, dtype)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # SDPA takes [B, H, S, D] views of Wan's layout
    rows = []
    t_dense = {}
    for backend in ("cudnn", "flash"):
        fn = _sdpa(backend)
        ms = _bench(lambda: fn(qt, kt, vt), rep_ms=rep_ms)
        t_dense[backend] = ms
        rows.append(Row(name, f"sdpa-{backend}", ms, dense_flops(B, H, S, D) / ms / 1e9))
    default = "default" in compats
    plan = plan_isa(q, k, Nt, cfg)
    flops = routed_flops(plan, D)
    coarse = coarse_attention(q, k, v, plan.geometry, 1.0 / math.sqrt(D))
    if default:
        ms = _bench(lambda: plan_isa(q, k, Nt, cfg), rep_ms=rep_ms)
        rows.append(Row(name, "isa-plan-only", ms))
        for fp in full_paths:
            ms = _bench(lambda: isa_forward(q, k, v, plan, coarse, gate=gate, full_path=fp), rep_ms=rep_ms)
            rows.append(Row(name, f"isa-routed-only[{fp}]", ms, flops / ms / 1e9, t_dense["cudnn"] / ms))
            ms = _bench(lambda: isa_attention_triton(q, k, v, Nt, cfg, gate=gate, full_path=fp), rep_ms=rep_ms)
            rows.append(Row(name, f"isa-fwd-plan-included[{fp}]", ms, flops / ms / 1e9, t_dense["cudnn"] / ms))
    release = "release" in compats
    if release:
        # The release's rules: the plan; the forward given it (block pooling and KV sequence
        # included: the routed part has no entry point of its own); the forward, plan included.
        rcfg = ISAConfig(compat="release")
        rplan = plan_isa(q, k, Nt, rcfg)
        rflops = release_routed_flops(rplan, D, rcfg.block_size)
        ms = _bench(lambda: plan_isa(q, k, Nt, rcfg), rep_ms=rep_ms)
        rows.append(Row(name, "isa-release-plan-only", ms))
        for fp in full_paths:
            ms = _bench(lambda: release_forward(q, k, v, Nt, rcfg, gate=gate, plan=rplan, full_path=fp), rep_ms=rep_ms)
            rows.append(Row(name, f"isa-release-fwd-given-plan[{fp}]", ms, rflops / ms / 1e9, t_dense["cudnn"] / ms))
            ms = _bench(lambda: release_forward(q, k, v, Nt, rcfg, gate=gate, full_path=fp), rep_ms=rep_ms)
            rows.append(Row(name, f"isa-release-fwd-plan-included[{fp}]", ms, rflops / ms / 1e9, t_dense["cudnn"] / ms))
    for r in rows:
        if r.speedup_vs_cudnn is None and r.name.startswith("sdpa"):
            r.speedup_vs_cudnn = t_dense["cudnn"] / r.ms
    # The headline ratio, timed in alternation with cuDNN (see `interleaved`).
    fp = "sdpa" if "sdpa" in full_paths else full_paths[0]
    cudnn = _sdpa("cudnn")
    fns = {"cudnn": lambda: cudnn(qt, kt, vt)}
    if default:
        fns["isa"] = lambda: isa_attention_triton(q, k, v, Nt, cfg, gate=gate, full_path=fp)
    if release:
        fns["isa-release"] = lambda: release_forward(q, k, v, Nt, rcfg, gate=gate, full_path=fp)
    alt = interleaved(fns)
    rows.append(Row(name, "sdpa-cudnn (interleaved)", alt["cudnn"], dense_flops(B, H, S, D) / alt["cudnn"] / 1e9, 1.0))
    if default:
        rows.append(Row(name, f"isa-fwd-plan-included[{fp}] (interleaved)", alt["isa"], flops / alt["isa"] / 1e9,
                        alt["ratio[cudnn/isa]"]))
    if release:
        rows.append(Row(name, f"isa-release-fwd-plan-included[{fp}] (interleaved)", alt["isa-release"],
                        rflops / alt["isa-release"] / 1e9, alt["ratio[cudnn/isa-release]"]))
    info = {"shape": name, "B": B, "H": H, "num_target": Nt, "num_context": Ns, "D": D, "dtype": str(dtype),
            "dense_tflop": dense_flops(B, H, S, D) / 1e12, "routed_tflop": flops / 1e12, "plan": plan.describe()}
    if release:
        info.update(release_routed_tflop=rflops / 1e12, release_plan=rplan.describe())
        if default:
            # The release's time over the default rules', per round of the interleaved timing.
            info["release_over_default_interleaved"] = 1.0 / alt["ratio[isa/isa-release]"]
            print(f"{name}: release rules / default rules, interleaved: {info['release_over_default_interleaved']:.3f}x the time")
        del rplan
    del q, k, v, qt, kt, vt, plan, coarse
    torch.cuda.empty_cache()
    return rows, info


def bench_backward(name, H, Nt, Ns, D=128, B=1, dtype=torch.bfloat16, rep_ms=1000):
    from liveditor.isa import ISAConfig, isa_attention

    S = Nt + Ns
    cfg = ISAConfig()
    gen, *base, gate = _inputs(B, S, H, D, dtype)
    gate = gate.requires_grad_()
    grad_out = torch.randn(B, S, H, D, device="cuda", dtype=dtype, generator=gen)
    q, k, v = (t.clone().requires_grad_() for t in base)
    rows = []
    t_dense = {}

    def step_dense(backend):
        q.grad = k.grad = v.grad = None
        fn = _sdpa(backend)
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        out = fn(qt, kt, vt)
        out.backward(grad_out.transpose(1, 2))

    def step_isa():
        q.grad = k.grad = v.grad = gate.grad = None
        out = isa_attention(q, k, v, Nt, cfg, gate=gate, backend="triton")
        out.backward(grad_out)

    for label, fn in (("sdpa-cudnn", lambda: step_dense("cudnn")), ("sdpa-flash", lambda: step_dense("flash")), ("isa", step_isa)):
        # Peak memory of one step from a clean state: inputs, grad_out and gradients of q, k, v.
        fn()
        q.grad = k.grad = v.grad = gate.grad = None
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
        ms = _bench(fn, rep_ms=rep_ms)
        if label.startswith("sdpa"):
            t_dense[label] = ms
        rows.append(Row(name, f"{label}-fwd+bwd", ms, None, None, peak))
    best = min(t_dense.values())
    for r in rows:
        r.speedup_vs_cudnn = t_dense["sdpa-cudnn"] / r.ms
    rows.append(Row(name, "isa-fwd+bwd vs faster SDPA", best / rows[-1].ms))
    return rows


# Launch tunings of the Triton forward kernel for `--sweep`: (num_warps, num_stages, exact_stages)
# of `ForwardTuning`; the first is the default (`kernels/isa_fwd.py` `DEFAULT_TUNING`).
SWEEP = [(4, 3, 5), (4, 3, 3), (4, 3, 4), (4, 3, 6), (8, 3, 5)]


def sweep_tuning(name, H, Nt, Ns, D=128, B=1, dtype=torch.bfloat16, rep_ms=500):
    """Time the routed forward (SDPA or Triton full path; the merge, and the Taylor launch where the
    Gluon kernel does not run it, on the Triton kernel) for each launch tuning of `SWEEP`, passed to
    the kernel explicitly (`isa_forward(..., tuning=...)`)."""
    from liveditor.isa import ISAConfig, plan_isa
    from liveditor.isa.plan import coarse_attention
    from liveditor.kernels.isa_function import isa_forward
    from liveditor.kernels.isa_fwd import ForwardTuning

    _, q, k, v, _ = _inputs(B, Nt + Ns, H, D, dtype)
    plan = plan_isa(q, k, Nt, ISAConfig())
    coarse = coarse_attention(q, k, v, plan.geometry, 1.0 / math.sqrt(D))
    rows = []
    for tune in (ForwardTuning(*t) for t in SWEEP):
        for fp in ("sdpa", "triton"):
            ms = _bench(lambda: isa_forward(q, k, v, plan, coarse, gate=0.1, full_path=fp, tuning=tune), rep_ms=rep_ms)
            rows.append(Row(name, f"sweep[{tune.label}][{fp}]", ms))
    return rows


def profile_isa(shapes=("wan2.1-1.3b-480p", "wan2.2-14b-544p"), D=128, B=1, dtype=torch.bfloat16):
    """Per-kernel CUDA times (torch.profiler) of the plan and of one forward (plan included) at each
    shape, and of one forward+backward at the first."""
    from torch.profiler import ProfilerActivity, profile

    from liveditor.isa import ISAConfig, isa_attention, plan_isa

    def show(title, fn):
        for _ in range(2):
            fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        print(f"== {title}")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=24, max_name_column_width=70))

    for i, name in enumerate(shapes):
        H, Nt, Ns = SHAPES[name]
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(B, Nt + Ns, H, D, device="cuda", dtype=dtype, generator=gen) for _ in range(3))
        show(f"plan {name}", lambda: plan_isa(q, k, Nt, ISAConfig()))
        gate = torch.rand(B, Nt + Ns, 1, 1, device="cuda", dtype=dtype, generator=gen) * 0.25
        show(f"forward, plan included {name}", lambda: isa_attention(q, k, v, Nt, ISAConfig(), gate=gate, backend="triton"))
        if i == 0:
            q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
            do = torch.randn_like(q)

            def step():
                q.grad = k.grad = v.grad = None
                isa_attention(q, k, v, Nt, ISAConfig(), gate=0.1, backend="triton").backward(do)

            show(f"forward+backward {name}", step)
        del q, k, v
        torch.cuda.empty_cache()


def timeline_isa(shapes=tuple(SHAPES), D=128, B=1, dtype=torch.bfloat16, trace_dir=None, calls=3, compat="default"):
    """The GPU timeline of one forward (plan included; `compat`: "default" or "release", the rule
    set) per shape: every kernel with its
    start (us from the first kernel's), duration, stream and grid, then the span, the time some
    kernel ran (busy) and the idle gaps. Shows what per-kernel sums hide: idle gaps between
    launches, a launch's last partial wave, and whether two streams overlap.

    `calls` forwards run back to back, each followed by a short spin kernel as a marker, and the
    last one is shown: by then the host has queued it ahead of the GPU, as in a steady stream of
    calls (the first call of a burst shows the host's launch latency as idle gaps instead). Chrome
    traces go to `trace_dir` when given."""
    import os
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    from liveditor.isa import ISAConfig
    from liveditor.kernels.isa_function import isa_attention_triton
    from liveditor.kernels.release import release_forward

    trace_dir = trace_dir or tempfile.mkdtemp()
    os.makedirs(trace_dir, exist_ok=True)
    for name in shapes:
        H, Nt, Ns = SHAPES[name]
        _, q, k, v, gate = _inputs(B, Nt + Ns, H, D, dtype)

        def fn():
            if compat == "release":
                return release_forward(q, k, v, Nt, ISAConfig(compat="release"), gate=gate)
            return isa_attention_triton(q, k, v, Nt, ISAConfig(), gate=gate)

        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
                torch.cuda._sleep(20_000)  # the marker between calls (a spin kernel)
            torch.cuda.synchronize()
        path = os.path.join(trace_dir, f"timeline_{name}_{compat}.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
        kernels = sorted((e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")),
                         key=lambda e: e["ts"])
        markers = [i for i, e in enumerate(kernels) if "spin" in e["name"]]
        if len(markers) == calls:
            kernels = kernels[markers[-2] + 1 if calls > 1 else 0: markers[-1]]
        if not kernels:
            print(f"== timeline {name}: no kernels recorded")
            continue
        t0 = kernels[0]["ts"]
        print(f"== timeline {name} ({compat} rules), call {calls} of {calls} (us; trace {path})")
        print(f"{'start':>9} {'dur':>8} {'stream':>6} {'grid':>16}  kernel")
        busy, gaps, end = 0.0, [], t0
        for e in kernels:
            ts, dur = e["ts"], e.get("dur", 0.0)
            if ts > end:
                gaps.append(ts - end)
            busy += max(0.0, ts + dur - max(ts, end))
            end = max(end, ts + dur)
            args = e.get("args", {})
            grid = "x".join(str(g) for g in args.get("grid", [])) or "-"
            print(f"{ts - t0:9.1f} {dur:8.1f} {args.get('stream', '-'):>6} {grid:>16}  {e['name'][:90]}")
        span = end - t0
        gaps.sort(reverse=True)
        print(f"span {span:.1f} us, busy {busy:.1f} us, idle {span - busy:.1f} us in {len(gaps)} gaps "
              f"(largest {', '.join(f'{g:.1f}' for g in gaps[:5])})")
        del q, k, v, gate
        torch.cuda.empty_cache()


# (rows, n, k, selected, rest, top_sum) of the four top-k selections of one plan, B = 1 (kernels/select.py).
SELECTIONS = {
    "1.3b kept": (12, 512, 64, True, False, False), "1.3b sharpness": (12 * 1024, 512, 32, False, False, True),
    "1.3b routing": (12, 1024, 512, True, True, False), "1.3b exact": (12 * 512, 576, 36, True, True, False),
    "14b kept": (40, 670, 83, True, False, False), "14b sharpness": (40 * 1340, 670, 41, False, False, True),
    "14b routing": (40, 1340, 670, True, True, False), "14b exact": (40 * 670, 753, 47, True, True, False),
}


def bench_selection(file=sys.stdout) -> bool:
    """`--selection`: the plan's top-k by sort and by bisection (`topk_select(method=...)`) at the
    DESIGN.md shapes, with ties; prints microseconds per call and whether both give the same result
    (returned: True when they agree on every row)."""
    from triton.testing import do_bench

    from liveditor.kernels.select import topk_select

    print(f"{'selection':<16} {'rows':>7} {'n':>5} {'k':>4} {'sort us':>9} {'bisect us':>10} {'same':>5}", file=file)
    agree = True
    for name, (R, n, k, sel, rest, tot) in SELECTIONS.items():
        x = torch.rand(R, n, device="cuda")
        x[:, ::7] = 0.5  # ties
        res, t = {}, {}
        for m in ("sort", "bisect"):
            res[m] = topk_select(x, k, sel, rest, tot, method=m)
            t[m] = do_bench(lambda: topk_select(x, k, sel, rest, tot, method=m), warmup=25, rep=200) * 1e3
        same = all((a is None and b is None) or torch.equal(a, b) if (a is None or a.dtype != torch.float32) else torch.allclose(a, b, rtol=1e-5)
                   for a, b in zip(res["sort"], res["bisect"]))
        agree &= same
        print(f"{name:<16} {R:>7} {n:>5} {k:>4} {t['sort']:>9.1f} {t['bisect']:>10.1f} {str(same):>5}", file=file)
    return agree


def print_table(rows, file=sys.stdout):
    print(f"{'shape':<18} {'variant':<48} {'ms':>9} {'TFLOP/s':>8} {'x cuDNN':>8} {'peak GiB':>9}", file=file)
    for r in rows:
        tf = f"{r.tflops:8.1f}" if r.tflops is not None else " " * 8
        sp = f"{r.speedup_vs_cudnn:8.2f}" if r.speedup_vs_cudnn is not None else " " * 8
        pk = f"{r.peak_gib:9.2f}" if r.peak_gib is not None else " " * 9
        print(f"{r.shape:<18} {r.name:<48} {r.ms:9.3f} {tf} {sp} {pk}", file=file)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--full-paths", nargs="*", default=["sdpa", "triton"])
    parser.add_argument("--compat", nargs="+", default=["default", "release"], choices=["default", "release"],
                        help="ISA rule sets of the forward rows (default: both, in the same run); --timeline "
                             "shows each in turn")
    parser.add_argument("--backward", action="store_true", help="also time forward+backward at the 1.3B shape")
    parser.add_argument("--no-forward", action="store_true")
    parser.add_argument("--rep-ms", type=int, default=1000)
    parser.add_argument("--sweep", action="store_true", help="time the launch tunings of the Triton kernel")
    parser.add_argument("--profile", action="store_true", help="per-kernel CUDA times of one forward")
    parser.add_argument("--timeline", action="store_true",
                        help="print the GPU timeline of one forward per shape and skip the other benchmarks")
    parser.add_argument("--trace-dir", default=None, help="where --timeline writes its Chrome traces")
    parser.add_argument("--json", default=None, help="write rows and shape info here")
    parser.add_argument("--selection", action="store_true",
                        help="time the plan's top-k selections by sort and by bisection and skip the other benchmarks")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("this benchmark needs a CUDA device", file=sys.stderr)
        return 2
    if args.selection:
        return 0 if bench_selection() else 1
    rows, infos = [], []
    if args.timeline:
        for compat in args.compat:
            timeline_isa(tuple(args.shapes), trace_dir=args.trace_dir, compat=compat)
        args.no_forward = True
    if args.profile:
        profile_isa()
    if args.sweep:
        r = sweep_tuning("wan2.1-1.3b-480p", *SHAPES["wan2.1-1.3b-480p"])
        rows += r
        print_table(r)
    if not args.no_forward:
        for name in args.shapes:
            H, Nt, Ns = SHAPES[name]
            r, info = bench_forward(name, H, Nt, Ns, full_paths=args.full_paths, rep_ms=args.rep_ms, compats=tuple(args.compat))
            rows += r
            infos.append(info)
            print_table(r)
            sys.stdout.flush()
    if args.backward:
        H, Nt, Ns = SHAPES["wan2.1-1.3b-480p"]
        r = bench_backward("wan2.1-1.3b-480p", H, Nt, Ns, rep_ms=args.rep_ms)
        rows += r
        print_table(r)
    print()
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "shapes": infos,
                       "rows": [r.__dict__ for r in rows]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
