"""Where the peak memory of one ISA (or SDPA) forward+backward step goes, allocation by allocation.

    python scripts/mem_peak.py [--shape wan2.1-1.3b-480p] [--top 25]

Records the CUDA caching allocator's history over one step (after a warm-up step), replays it to
find the moment of peak allocated memory, and prints the tensors alive then with the innermost
frames of our code that allocated them. Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import os

import torch


def _where(frames, keep=3):
    ours = [f for f in frames if "liveditor" in f["filename"] or "mem_peak" in f["filename"] or "kernels/" in f["filename"]]
    ours = ours or frames
    return " <- ".join(f"{os.path.basename(f['filename'])}:{f['line']}:{f['name']}" for f in ours[:keep])


def _replay(events):
    """Yield `(live allocations, allocated bytes)` after each event of an allocator trace."""
    live, cur = {}, 0
    for ev in events:
        if ev["action"] == "alloc":
            live[ev["addr"]] = ev
            cur += ev["size"]
        elif ev["action"] == "free_requested" and ev["addr"] in live:
            cur -= live.pop(ev["addr"])["size"]
        yield live, cur


def _print_live(allocations, top):
    gib = 2**30
    rows = sorted(allocations, key=lambda e: -e["size"])
    for e in rows[:top]:
        print(f"  {e['size'] / gib:7.3f} GiB  {_where(e['frames'])}")
    rest = sum(e["size"] for e in rows[top:])
    print(f"  {rest / gib:7.3f} GiB  in {max(0, len(rows) - top)} smaller allocations")


def peak_report(step, clear, title: str, top: int) -> None:
    """Warm-up step, then a measured step; prints what the warm-up left allocated and what is alive
    at the measured step's peak."""
    gib = 2**30
    torch.cuda.memory._record_memory_history(max_entries=400000)
    step()
    clear()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    warm_events = len(torch.cuda.memory._snapshot()["device_traces"][0])
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    peak_stat = torch.cuda.max_memory_allocated()
    events = snap["device_traces"][0]
    best, best_live, left, at_start = -1, {}, {}, 0
    for i, (live, cur) in enumerate(_replay(events)):
        if i == warm_events - 1:
            left, at_start = dict(live), cur
        elif i >= warm_events and cur > best:
            best, best_live = cur, dict(live)
    print(f"\n== {title}: allocated before the step {base / gib:.3f} GiB, peak {peak_stat / gib:.3f} GiB")
    print(f"left allocated by the warm-up step ({at_start / gib:.3f} GiB):")
    _print_live(left.values(), 8)
    print(f"alive at the measured step's peak, allocated since the trace began (+{(best - at_start) / gib:.3f} GiB over the step's start):")
    _print_live(best_live.values(), top)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--num-target", type=int, default=32760)
    p.add_argument("--num-context", type=int, default=32760)
    args = p.parse_args()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from liveditor.isa import ISAConfig, isa_attention

    B, H, D, Nt = 1, args.heads, 128, args.num_target
    S = Nt + args.num_context
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_() for _ in range(3))
    gate = (torch.rand(B, S, 1, 1, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.25).requires_grad_()
    grad_out = torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    cfg = ISAConfig()

    def isa_step():
        q.grad = k.grad = v.grad = gate.grad = None
        isa_attention(q, k, v, Nt, cfg, gate=gate, backend="triton").backward(grad_out)

    def sdpa_step():
        q.grad = k.grad = v.grad = gate.grad = None
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out.backward(grad_out.transpose(1, 2))

    def clear():
        q.grad = k.grad = v.grad = gate.grad = None

    for title, step in (("SDPA cuDNN", sdpa_step), ("ISA", isa_step)):
        peak_report(step, clear, title, args.top)
        clear()


if __name__ == "__main__":
    main()
