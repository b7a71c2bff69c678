"""ISA as the published LIVEditor release computes it (`ISAConfig(compat="release")`).

For users who must match official outputs. The release differs from DESIGN.md's contract in its
blocking and keep rules (docs/editing.md, "ISA rules: ours and the release's"):

1. **Blocking.** The concatenated sequence `[target, source]` is zero-padded to a multiple of the
   block size and cut into `NB = ceil(S / bs)` blocks; only the sequence's last block is partial.
   `nbt = Nt // bs` blocks count as target, the other `nbs = NB - nbt` as source, so when
   `Nt % bs != 0` the first "source" block straddles the boundary (it holds the last `Nt % bs`
   target tokens and the first source tokens).
2. **Coarse attention** over the `NB` blocks: means over each block's real tokens (as ours).
3. **Kept source blocks.** Saliency of source block `j` = sum over the `nbt` whole target blocks'
   rows of `P_c[i, nbt + j]`; keep the top `floor(context_keep_ratio * nbs)` (`nbs // 8` at the
   default ratio: none below 8), in descending saliency.
4. **The KV sequence** is the `Nt` target tokens followed by the `bs` tokens of each kept block of
   the padded sequence, in kept order: a kept straddling block brings its target tokens in a
   second time, and a kept last block brings its zero padding (keys and values 0).
5. **Sharpness** of every query block (all `NB`): the sum of its top
   `max(1, floor(exact_kv_ratio * nbt))` coarse probabilities over the whole target blocks.
   The `floor(full_query_ratio * NB)` sharpest take exact softmax over the whole KV sequence
   (padding keys included, logit 0).
6. **Taylor path.** The KV sequence is zero-padded to `NKV = ceil(Tkv / bs)` blocks of `bs`. A
   query block attends exactly the top `max(1, floor(exact_kv_ratio * NKV))` blocks by
   `sum(q) . sum(k)` (every `bs` row, padding included, as the release's default TileLang kernel
   does); every other block is one centroid with key `sum(k) / bs`, count `bs` and value sum
   `sum(v)`: padding counts as tokens of zeros.
7. **Output.** The routed output plus `gate * out_c`; padded query rows are dropped.

Ties break toward the lower index (the release leaves them to `torch.topk` / `argsort`).
Arithmetic is float32 (float64 for float64 inputs) where the release computes the block
compression and the attention in bfloat16, so the two agree in every rule and differ by bf16
rounding, which can flip a decision between near-tied blocks.

This is plain PyTorch (any device and dtype), the statement the Triton backend of these rules
(`liveditor/kernels/release.py`) is tested against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from liveditor.isa.config import ISAConfig
from liveditor.isa.plan import _floor_count, accumulation_dtype

# Upper bound on the elements of one chunk's logit tensor (keeps memory bounded at real sizes).
_MAX_CHUNK_ELEMENTS = 1 << 26


class ReleaseCounts(NamedTuple):
    """Block counts of the release's rules for one layout."""

    num_blocks: int  # NB = ceil(S / bs), over the concatenated sequence
    num_target_blocks: int  # nbt = Nt // bs (whole target blocks)
    num_source_blocks: int  # nbs = NB - nbt (the first one straddles when Nt % bs != 0)
    n_keep: int  # kept source blocks: floor(context_keep_ratio * nbs)
    kv_tokens: int  # Tkv = Nt + n_keep * bs
    kv_blocks: int  # NKV = ceil(Tkv / bs)
    n_sharp: int  # coarse probabilities summed into sharpness
    n_full: int  # full query blocks
    n_exact: int  # exactly attended KV blocks of a Taylor query block


def release_counts(num_target: int, num_context: int, cfg: ISAConfig) -> ReleaseCounts:
    bs = cfg.block_size
    S = num_target + num_context
    nb = -(-S // bs)
    nbt = num_target // bs
    nbs = nb - nbt
    n_keep = _floor_count(cfg.context_keep_ratio, nbs)
    tkv = num_target + n_keep * bs
    nkv = -(-tkv // bs)
    return ReleaseCounts(
        num_blocks=nb,
        num_target_blocks=nbt,
        num_source_blocks=nbs,
        n_keep=n_keep,
        kv_tokens=tkv,
        kv_blocks=nkv,
        n_sharp=min(nbt, max(1, _floor_count(cfg.exact_kv_ratio, nbt))),
        n_full=_floor_count(cfg.full_query_ratio, nb),
        n_exact=min(nkv, max(1, _floor_count(cfg.exact_kv_ratio, nkv))),
    )


@dataclass
class ReleasePlan:
    """Routing decisions of the release's rules for one `(q, k, num_target)`; reusable across calls.

    Block tables are int64 from `plan_release` (the torch planner), int32 from the kernels' planner
    (`liveditor.kernels.release.plan_release_triton`); either serves either backend.

    Attributes:
        num_target, num_context, block_size: the layout it was made for.
        kept_context_blocks: `[B, H, n_keep]` kept source blocks (`j`: block `nbt + j` of the
            padded concatenated sequence), in descending saliency: the order of the KV sequence.
        full_query_blocks: `[B, H, n_full]` query blocks (of the `NB`) on the exact path, ascending.
        taylor_query_blocks: `[B, H, NB - n_full]`, the others, ascending.
        taylor_exact_kv_blocks: `[B, H, n_taylor, n_exact]` blocks of the padded KV sequence
            each Taylor query block attends exactly, ascending.
        context_saliency: `[B, H, nbs]`; query_sharpness: `[B, H, NB]`.
    """

    num_target: int
    num_context: int
    block_size: int
    kept_context_blocks: torch.Tensor
    full_query_blocks: torch.Tensor
    taylor_query_blocks: torch.Tensor
    taylor_exact_kv_blocks: torch.Tensor
    context_saliency: torch.Tensor
    query_sharpness: torch.Tensor

    @property
    def batch_heads(self) -> tuple[int, int]:
        return tuple(self.full_query_blocks.shape[:2])

    def _map(self, fn) -> "ReleasePlan":
        return ReleasePlan(**{f.name: (fn(getattr(self, f.name)) if isinstance(getattr(self, f.name), torch.Tensor) else getattr(self, f.name)) for f in fields(self)})

    def to(self, device) -> "ReleasePlan":
        return self._map(lambda t: t.to(device))

    def repeat_batch(self, groups: int) -> "ReleasePlan":
        """The plan for a batch of `groups` copies of these inputs (`[B, ...]` -> `[groups * B, ...]`)."""
        return self._map(lambda t: t.repeat(groups, *([1] * (t.dim() - 1))))

    def describe(self) -> dict:
        return {
            "compat": "release",
            "num_target": self.num_target,
            "num_context": self.num_context,
            "kept_context_blocks": self.kept_context_blocks.shape[-1],
            "full_query_blocks": self.full_query_blocks.shape[-1],
            "taylor_query_blocks": self.taylor_query_blocks.shape[-1],
            "taylor_exact_kv_blocks": self.taylor_exact_kv_blocks.shape[-1],
        }


def _padded_blocks(x: torch.Tensor, bs: int, acc: torch.dtype) -> torch.Tensor:
    """`[B, S, H, D]` -> `[B, H, NB, bs, D]` in `acc`, zero-padded at the end of the sequence."""
    B, S, H, D = x.shape
    nb = -(-S // bs)
    xh = x.permute(0, 2, 1, 3).to(acc)
    return F.pad(xh, (0, 0, 0, nb * bs - S)).view(B, H, nb, bs, D)


class _Coarse(NamedTuple):
    q_blocks: torch.Tensor  # [B, H, NB, bs, D] padded queries
    k_blocks: torch.Tensor
    v_blocks: torch.Tensor
    probs: torch.Tensor  # [B, H, NB, NB]
    out: torch.Tensor  # [B, H, NB, D]


def _coarse(q, k, v, cfg: ISAConfig) -> _Coarse:
    bs = cfg.block_size
    acc = accumulation_dtype(q.dtype)
    S = q.shape[1]
    qb, kb, vb = (_padded_blocks(t, bs, acc) for t in (q, k, v))
    nb = qb.shape[2]
    sizes = torch.full((nb,), bs, dtype=acc, device=q.device)
    sizes[-1] = S - (nb - 1) * bs
    sizes = sizes.view(1, 1, nb, 1)
    q_mean, k_mean, v_mean = qb.sum(3) / sizes, kb.sum(3) / sizes, vb.sum(3) / sizes
    probs = torch.softmax((q_mean / math.sqrt(q.shape[-1])) @ k_mean.transpose(-1, -2), dim=-1)
    return _Coarse(qb, kb, vb, probs, probs @ v_mean)


def _descending(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` largest along the last dim, largest first, ties toward the lower index."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :count]


def _kv_sequence(x_blocks: torch.Tensor, x: torch.Tensor, kept: torch.Tensor, num_target: int, counts: ReleaseCounts) -> torch.Tensor:
    """The KV sequence `[B, H, NKV, bs, D]`: the `Nt` target tokens, then the `bs` rows of each kept
    block of the padded sequence, zero-padded to `NKV * bs` rows."""
    B, H, _, bs, D = x_blocks.shape
    target = x[:, :num_target].permute(0, 2, 1, 3).to(x_blocks.dtype)
    index = (kept.long() + counts.num_target_blocks).view(B, H, -1, 1, 1).expand(-1, -1, -1, bs, D)
    kept_rows = x_blocks.gather(2, index).reshape(B, H, -1, D)
    seq = torch.cat([target, kept_rows], dim=2)
    seq = F.pad(seq, (0, 0, 0, counts.kv_blocks * bs - seq.shape[2]))
    return seq.view(B, H, counts.kv_blocks, bs, D)


def _plan_from(coarse: _Coarse, k: torch.Tensor, num_target: int, cfg: ISAConfig) -> tuple[ReleasePlan, torch.Tensor]:
    """Steps 3 to 6 (decisions), and the KV sequence's keys `[B, H, NKV, bs, D]`."""
    counts = release_counts(num_target, k.shape[1] - num_target, cfg)
    nbt = counts.num_target_blocks
    probs = coarse.probs
    saliency = probs[:, :, :nbt, nbt:].sum(2)  # [B, H, nbs]
    kept = _descending(saliency, counts.n_keep)
    if counts.n_sharp:
        sharpness = torch.topk(probs[..., :nbt], counts.n_sharp, dim=-1).values.sum(-1)
    else:
        sharpness = probs.new_zeros(probs.shape[:3])
    order = _descending(sharpness, counts.num_blocks)
    full = torch.sort(order[..., : counts.n_full], dim=-1).values
    taylor = torch.sort(order[..., counts.n_full :], dim=-1).values

    k_seq = _kv_sequence(coarse.k_blocks, k, kept, num_target, counts)
    q_sum = coarse.q_blocks.sum(3)  # [B, H, NB, D]: the release ranks by block sums
    k_sum = k_seq.sum(3)  # [B, H, NKV, D]
    tq = q_sum.gather(2, taylor.unsqueeze(-1).expand(-1, -1, -1, q_sum.shape[-1]))
    exact = torch.sort(_descending(tq @ k_sum.transpose(-1, -2), counts.n_exact), dim=-1).values
    plan = ReleasePlan(num_target, k.shape[1] - num_target, cfg.block_size, kept, full, taylor, exact, saliency, sharpness)
    return plan, k_seq


def _check_layout(q: torch.Tensor, num_target: int) -> None:
    if num_target < 1:
        raise ValueError("ISAConfig(compat='release') needs num_target >= 1: the release's KV sequence starts with the target tokens")


@torch.no_grad()
def plan_release(q: torch.Tensor, k: torch.Tensor, num_target: int, cfg: ISAConfig) -> ReleasePlan:
    """The release's routing decisions for `q, k` `[B, S, H, D]` (target tokens first)."""
    _check_layout(q, num_target)
    coarse = _coarse(q, k, k, cfg)
    return _plan_from(coarse, k, num_target, cfg)[0]


def _check_release_plan(plan: ReleasePlan, q: torch.Tensor, num_target: int, cfg: ISAConfig) -> None:
    B, S, H, _ = q.shape
    if not isinstance(plan, ReleasePlan):
        raise ValueError(f"plan is a {type(plan).__name__}; ISAConfig(compat='release') takes a ReleasePlan from plan_isa with the same config")
    if plan.batch_heads != (B, H):
        raise ValueError(f"plan was made for [B, H] = {list(plan.batch_heads)}, inputs have {[B, H]}")
    if (plan.num_target, plan.num_context, plan.block_size) != (num_target, S - num_target, cfg.block_size):
        raise ValueError(
            f"plan was made for num_target={plan.num_target}, num_context={plan.num_context}, block_size={plan.block_size}; "
            f"inputs have {num_target}, {S - num_target}, {cfg.block_size}: make a new plan"
        )


def release_isa_attention(q, k, v, num_target: int, cfg: ISAConfig, gate=None, plan: Optional[ReleasePlan] = None):
    """ISA under the release's rules. `q, k, v` `[B, S, H, D]`; returns `(out [B, S, H, D] in q's
    dtype, plan)`. Differentiable through the coarse attention and every path (the plan is discrete)."""
    _check_layout(q, num_target)
    B, S, H, D = q.shape
    bs = cfg.block_size
    scale = 1.0 / math.sqrt(D)
    coarse = _coarse(q, k, v, cfg)
    counts = release_counts(num_target, S - num_target, cfg)
    if plan is None:
        with torch.no_grad():
            plan, _ = _plan_from(coarse._replace(probs=coarse.probs.detach()), k.detach(), num_target, cfg)
    else:
        _check_release_plan(plan, q, num_target, cfg)
    k_seq = _kv_sequence(coarse.k_blocks, k, plan.kept_context_blocks, num_target, counts)
    v_seq = _kv_sequence(coarse.v_blocks, v, plan.kept_context_blocks, num_target, counts)
    nkv = counts.kv_blocks
    qb = coarse.q_blocks
    out = torch.zeros_like(qb)  # [B, H, NB, bs, D]

    def write(blocks: torch.Tensor, rows: torch.Tensor) -> None:
        out.scatter_(2, blocks.long().view(B, H, -1, 1, 1).expand(-1, -1, -1, bs, D), rows)

    def take(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """`x` `[B, H, N, bs, D]` at `blocks` `[B, H, ...]` -> `[B, H, ..., bs, D]`."""
        flat = blocks.long().reshape(B, H, -1)
        got = x.gather(2, flat.view(B, H, -1, 1, 1).expand(-1, -1, -1, bs, D))
        return got.view(*blocks.shape, bs, D)

    # Full path: exact softmax over the whole KV sequence (its Tkv rows, padding of a kept last block included).
    keys = k_seq.reshape(B, H, -1, D)[:, :, : counts.kv_tokens]
    values = v_seq.reshape(B, H, -1, D)[:, :, : counts.kv_tokens]
    full = plan.full_query_blocks
    chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, B * H * bs * counts.kv_tokens))
    for c0 in range(0, full.shape[-1], chunk):
        blocks = full[..., c0 : c0 + chunk]
        rows = take(qb, blocks).flatten(2, 3)  # [B, H, c * bs, D]
        probs = torch.softmax(rows @ keys.transpose(-1, -2) * scale, dim=-1)
        write(blocks, (probs @ values).view(B, H, -1, bs, D))

    # Taylor path: every row of the exact blocks (padding included), one centroid per other block.
    k_cen = k_seq.sum(3) / bs  # [B, H, NKV, D]
    v_cen = v_seq.sum(3) / bs
    log_count = math.log(bs)
    taylor = plan.taylor_query_blocks
    n_exact = plan.taylor_exact_kv_blocks.shape[-1]
    chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, B * H * bs * (n_exact * bs + nkv)))
    for c0 in range(0, taylor.shape[-1], chunk):
        blocks = taylor[..., c0 : c0 + chunk]
        c = blocks.shape[-1]
        rows = take(qb, blocks)  # [B, H, c, bs, D]
        exact = plan.taylor_exact_kv_blocks[..., c0 : c0 + chunk, :]  # [B, H, c, n_exact]
        k_ex = take(k_seq, exact).flatten(3, 4)  # [B, H, c, n_exact * bs, D]
        v_ex = take(v_seq, exact).flatten(3, 4)
        logits_exact = rows @ k_ex.transpose(-1, -2) * scale
        selected = torch.zeros((B, H, c, nkv), dtype=torch.bool, device=q.device).scatter_(-1, exact.long(), True)
        logits_cen = (rows @ k_cen.unsqueeze(2).transpose(-1, -2)) * scale + log_count
        logits_cen = logits_cen.masked_fill(selected.unsqueeze(3), float("-inf"))
        probs = torch.softmax(torch.cat([logits_exact, logits_cen], dim=-1), dim=-1)
        p_exact, p_cen = probs.split([logits_exact.shape[-1], nkv], dim=-1)
        write(blocks, p_exact @ v_ex + p_cen @ v_cen.unsqueeze(2))

    routed = out.view(B, H, -1, D)[:, :, :S].permute(0, 2, 1, 3)
    if gate is not None:
        token_out = coarse.out.repeat_interleave(bs, dim=2)[:, :, :S].permute(0, 2, 1, 3)
        g = gate.to(routed.dtype) if isinstance(gate, torch.Tensor) else float(gate)
        routed = routed + g * token_out
    return routed.to(q.dtype), plan
