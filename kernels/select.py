"""Row-wise top-k selection with ties toward the lower index, in one Triton program per row.

ISA's planning is four top-k selections (kept context blocks, sharpness, routing, a Taylor block's
exact KV blocks). In PyTorch each is a stable sort, an ascending sort of the chosen indices and a
complement, a dozen launches at the plan's shapes; here each is one launch.

Two ways to find the threshold, the same selection either way:

- `"sort"`: each score becomes a unique 64-bit key, the float's bits mapped to an order-preserving
  integer in the high word and `2^31 - 1 - index` in the low word, so sorting keys descending
  orders by score and, among equal scores, by lower index; the k-th largest key is the threshold.
- `"bisect"`: a binary search over the 32-bit order-preserving integers, between the row's smallest
  and largest score, finds a threshold `T` with at most k scores above it and at least k at or
  above it (no sort); it stops as soon as exactly k scores lie at or above the midpoint, at most 32
  counting steps. Everything above `T` is selected, and of the scores equal to `T` the lowest-index
  ones, as many as are still missing (a prefix count).

The selected and the remaining indices are written in ascending order by a prefix sum over the
row. `topk_select(method="auto")` takes the one measured faster (docs/benchmarks.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def topk_select_kernel(
    SCORES, SELECTED, REST, TOP_SUM,
    n, k,
    s_row, s_sel, s_rest,
    BLOCK_N: tl.constexpr, WRITE_SELECTED: tl.constexpr, WRITE_REST: tl.constexpr, WRITE_SUM: tl.constexpr,
    BISECT: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_N)
    ok = offs < n
    if BISECT:
        x = tl.load(SCORES + row * s_row + offs, mask=ok, other=0.0).to(tl.float32)
        x = tl.where(x == 0.0, 0.0, x)  # -0.0 ties with 0.0, as in a float comparison
        bits = x.to(tl.int32, bitcast=True)
        ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
        # A threshold T with #{ordered > T} <= k <= #{ordered >= T}, searched between the row's
        # smallest and largest score: the k-th largest score, or any T with exactly k scores at or
        # above it, which ends the search early (about half of the 32 steps on the plan's rows).
        # The bounds live in int64 (their difference overflows int32); every mid fits int32, so
        # the row compares in int32.
        lo = tl.min(tl.where(ok, ordered, 2147483647), 0).to(tl.int64)
        hi = tl.max(tl.where(ok, ordered, -2147483648), 0).to(tl.int64)
        while lo < hi:
            mid = lo + (hi - lo + 1) // 2
            count = tl.sum((ok & (ordered >= mid.to(tl.int32))).to(tl.int32), 0)
            lo = tl.where(count >= k, mid, lo)
            hi = tl.where(count == k, mid, tl.where(count >= k, hi, mid - 1))
        threshold = lo.to(tl.int32)
        above = ok & (ordered > threshold)
        tie = ok & (ordered == threshold)
        missing = k - tl.sum(above.to(tl.int32), 0)
        selected = (above | (tie & (tl.cumsum(tie.to(tl.int32), 0) <= missing))) & (k > 0)
    else:
        if WRITE_SUM and not (WRITE_SELECTED or WRITE_REST):
            # The sum alone needs no indices: sort the values, not 64-bit keys.
            x = tl.load(SCORES + row * s_row + offs, mask=ok, other=float("-inf")).to(tl.float32)
            ranked = tl.sort(x, 0, descending=True)
            selected = offs < 0  # unused
            top = tl.sum(tl.where(offs < k, ranked, 0.0), 0)
        else:
            x = tl.load(SCORES + row * s_row + offs, mask=ok, other=0.0).to(tl.float32)
            x = tl.where(x == 0.0, 0.0, x)  # -0.0 ties with 0.0, as in a float comparison
            bits = x.to(tl.int32, bitcast=True)
            ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
            key = ordered.to(tl.int64) * 4294967296 + (2147483647 - offs).to(tl.int64)
            key = tl.where(ok, key, -9223372036854775807)
            ranked = tl.sort(key, 0, descending=True)
            threshold = tl.sum(tl.where(offs == k - 1, ranked, 0), 0)
            selected = ok & (key >= threshold) & (k > 0)
    if WRITE_SELECTED:
        pos = tl.cumsum(selected.to(tl.int32), 0) - 1
        tl.store(SELECTED + row * s_sel + pos, offs, mask=selected)
    if WRITE_REST:
        rest = ok & (~selected)
        pos_rest = tl.cumsum(rest.to(tl.int32), 0) - 1
        tl.store(REST + row * s_rest + pos_rest, offs, mask=rest)
    if WRITE_SUM:
        if BISECT or WRITE_SELECTED or WRITE_REST:
            top = tl.sum(tl.where(selected, x, 0.0), 0)
        tl.store(TOP_SUM + row, top)


METHODS = ("auto", "sort", "bisect")


def _resolve_method(method: str, rows: int, n: int) -> str:
    if method not in METHODS:
        raise ValueError(f"topk_select's method must be one of {METHODS}, got {method!r}")
    if method != "auto":
        return method
    # Measured on an H100 (docs/benchmarks.md, `python -m liveditor.kernels.bench --selection`): the sort wins
    # only on few rows of up to 1024 (latency), the bisection everywhere else (up to 5x).
    block = triton.next_power_of_2(max(n, 1))
    return "sort" if rows < 32 and block <= 1024 else "bisect"


def topk_select(scores: torch.Tensor, k: int, selected: bool = True, rest: bool = False, top_sum: bool = False,
                method: str = "auto"):
    """For each row of `scores` `[R, n]` (unit column stride), the `k` largest entries.

    Returns `(selected [R, k], rest [R, n - k], top_sum [R])`: int32 column indices in ascending
    order (ties toward the lower index) and the sum of the selected values; unrequested parts are None.
    `method`: `METHODS`; `"auto"` (what the planner uses) takes the one measured faster for the shape,
    `"sort"` and `"bisect"` force one (the same selection either way; `python -m liveditor.kernels.bench --selection`
    times both).
    """
    R, n = scores.shape
    if scores.stride(-1) != 1:
        scores = scores.contiguous()
    k = max(0, min(k, n))
    dev = scores.device
    sel = torch.empty((R, k), dtype=torch.int32, device=dev) if selected else None
    rem = torch.empty((R, n - k), dtype=torch.int32, device=dev) if rest else None
    tot = torch.empty((R,), dtype=torch.float32, device=dev) if top_sum else None
    if R == 0 or n == 0:
        if tot is not None:
            tot.zero_()
        return sel, rem, tot
    dummy = sel if sel is not None else (rem if rem is not None else tot)
    bisect = _resolve_method(method, R, n) == "bisect"
    block = max(16, triton.next_power_of_2(n))
    # The bisection's 32 row reductions are cheaper within fewer warps: 2 warps measured 1.3x-1.8x
    # faster than 4 on rows of up to 1024 (H100, docs/benchmarks.md).
    warps = (2 if block <= 1024 else 8) if bisect else (4 if n <= 1024 else 8)
    topk_select_kernel[(R,)](
        scores, sel if selected else dummy, rem if rest else dummy, tot if top_sum else dummy,
        n, k, scores.stride(0), sel.stride(0) if selected else 0, rem.stride(0) if rest else 0,
        BLOCK_N=block, WRITE_SELECTED=selected, WRITE_REST=rest, WRITE_SUM=top_sum, BISECT=bisect, num_warps=warps,
    )
    return sel, rem, tot
