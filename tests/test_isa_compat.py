"""ISAConfig(compat="release"): the published LIVEditor code's blocking and keep rules, checked
against a float64 statement of those rules written loop by loop from the release's description
(liveditor/isa/release.py, docs/editing.md), at lengths that are not multiples of the block size."""

import math

import pytest
import torch

from liveditor.isa import ISAConfig, ReleasePlan, SharedPlan, isa_attention, plan_isa
from liveditor.isa.release import release_counts


def _top(values, count):
    """Indices of the `count` largest of a list, largest first, ties toward the lower index."""
    return sorted(range(len(values)), key=lambda i: (-values[i], i))[:count]


def release_statement(q, k, v, nt, gate, bs=64, keep=0.125, full=0.5, exact=0.0625):
    """The release's ISA for one batch element and head, `q, k, v` `[S, D]` float64, `gate` `[S]`.

    Returns `(out [S, D], decisions dict)`. Written as plainly as possible: Python loops over blocks.
    """
    S, D = q.shape
    scale = 1.0 / math.sqrt(D)
    NB = -(-S // bs)
    pad = NB * bs - S
    zeros = torch.zeros(pad, D, dtype=q.dtype)
    qp, kp, vp = torch.cat([q, zeros]), torch.cat([k, zeros]), torch.cat([v, zeros])
    size = [bs] * (NB - 1) + [S - (NB - 1) * bs]
    qc = torch.stack([qp[i * bs:(i + 1) * bs].sum(0) / size[i] for i in range(NB)])
    kc = torch.stack([kp[i * bs:(i + 1) * bs].sum(0) / size[i] for i in range(NB)])
    vc = torch.stack([vp[i * bs:(i + 1) * bs].sum(0) / size[i] for i in range(NB)])
    P = torch.softmax(qc @ kc.T * scale, dim=-1)
    out_c = P @ vc

    nbt = nt // bs
    nbs = NB - nbt
    n_keep = int(math.floor(keep * nbs + 1e-9))
    saliency = [float(sum(P[i, nbt + j] for i in range(nbt))) for j in range(nbs)]
    kept = _top(saliency, n_keep)
    # KV sequence: all target tokens, then each kept block's bs rows of the padded sequence.
    rows_k = [k[:nt]] + [kp[(nbt + j) * bs:(nbt + j + 1) * bs] for j in kept]
    rows_v = [v[:nt]] + [vp[(nbt + j) * bs:(nbt + j + 1) * bs] for j in kept]
    K, V = torch.cat(rows_k), torch.cat(rows_v)
    tkv = K.shape[0]

    n_sharp = max(1, int(math.floor(exact * nbt + 1e-9)))
    sharp = [sum(sorted(P[i, :nbt].tolist(), reverse=True)[:n_sharp]) for i in range(NB)]
    n_full = int(math.floor(full * NB + 1e-9))
    ranked = _top(sharp, NB)
    full_blocks, taylor_blocks = sorted(ranked[:n_full]), sorted(ranked[n_full:])

    nkv = -(-tkv // bs)
    Kp = torch.cat([K, torch.zeros(nkv * bs - tkv, D, dtype=q.dtype)])
    Vp = torch.cat([V, torch.zeros(nkv * bs - tkv, D, dtype=q.dtype)])
    ksum = [Kp[b * bs:(b + 1) * bs].sum(0) for b in range(nkv)]
    vsum = [Vp[b * bs:(b + 1) * bs].sum(0) for b in range(nkv)]
    n_exact = max(1, int(math.floor(exact * nkv + 1e-9)))

    out = torch.zeros(NB * bs, D, dtype=q.dtype)
    for i in full_blocks:
        for r in range(i * bs, (i + 1) * bs):
            w = torch.softmax(K @ qp[r] * scale, dim=0)  # every KV row, no mask
            out[r] = w @ V
    exact_blocks = {}
    for i in taylor_blocks:
        qsum = qp[i * bs:(i + 1) * bs].sum(0)
        chosen = sorted(_top([float(qsum @ ksum[b]) for b in range(nkv)], n_exact))
        exact_blocks[i] = chosen
        for r in range(i * bs, (i + 1) * bs):
            num = torch.zeros(D, dtype=q.dtype)
            den = torch.zeros((), dtype=q.dtype)
            for b in range(nkv):
                if b in chosen:
                    for t in range(b * bs, (b + 1) * bs):  # padding rows too
                        e = torch.exp(qp[r] @ Kp[t] * scale)
                        num, den = num + e * Vp[t], den + e
                else:
                    e = torch.exp(qp[r] @ (ksum[b] / bs) * scale)
                    num, den = num + e * vsum[b], den + bs * e
            out[r] = num / den
    token_block = [t // bs for t in range(S)]
    result = out[:S] + gate.view(S, 1) * out_c[token_block]
    return result, {"kept": kept, "full": full_blocks, "taylor": taylor_blocks, "exact": exact_blocks}


def _inputs(B, S, H, D, seed, boost=None):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, S, H, D, generator=g, dtype=torch.float64) for _ in range(3))
    gate = (torch.rand(B, S, 1, 1, generator=g, dtype=torch.float64) - 0.5) * 0.5
    if boost is not None:
        # A direction every query shares, and keys [a, b) along it: their block wins the saliency.
        a, b = boost
        u = torch.randn(D, generator=g, dtype=torch.float64)
        u = u / u.norm()
        q += 2.0 * u
        k[:, a:b] += 4.0 * u
    return q, k, v, gate


def _check(q, k, v, gate, nt, bs, **ratios):
    cfg = ISAConfig(block_size=bs, compat="release", **{n: r for n, r in ratios.items()})
    out, plan = isa_attention(q, k, v, nt, cfg, gate=gate, backend="torch", return_plan=True)
    assert isinstance(plan, ReleasePlan)
    B, S, H, D = q.shape
    for b in range(B):
        for h in range(H):
            want, decided = release_statement(q[b, :, h], k[b, :, h], v[b, :, h], nt, gate[b, :, 0, 0], bs=bs, **{
                {"context_keep_ratio": "keep", "full_query_ratio": "full", "exact_kv_ratio": "exact"}[n]: r for n, r in ratios.items()})
            assert plan.kept_context_blocks[b, h].tolist() == decided["kept"]
            assert plan.full_query_blocks[b, h].tolist() == decided["full"]
            assert plan.taylor_query_blocks[b, h].tolist() == decided["taylor"]
            got_exact = {i: plan.taylor_exact_kv_blocks[b, h, n].tolist() for n, i in enumerate(decided["taylor"])}
            assert got_exact == decided["exact"]
            torch.testing.assert_close(out[b, :, h], want, rtol=1e-10, atol=1e-12)
    return out, plan


@pytest.mark.parametrize("nt,ns,bs", [(200, 600, 64), (100, 1000, 64), (37, 91, 16), (45, 243, 16)])
def test_release_rules_match_the_float64_statement(nt, ns, bs):
    q, k, v, gate = _inputs(2, nt + ns, 2, 16, seed=nt + ns)
    _check(q, k, v, gate, nt, bs, context_keep_ratio=0.125, full_query_ratio=0.5, exact_kv_ratio=0.0625)


def test_straddling_block_kept_brings_target_tokens_in_twice():
    # Nt = 200 = 3 * 64 + 8: "source" block 0 holds target tokens 192..199 and source tokens 200..255.
    nt, ns, bs = 200, 600, 64
    q, k, v, gate = _inputs(1, nt + ns, 1, 16, seed=3, boost=(192, 256))
    out, plan = _check(q, k, v, gate, nt, bs, context_keep_ratio=0.125, full_query_ratio=0.5, exact_kv_ratio=0.0625)
    assert plan.kept_context_blocks[0, 0].tolist() == [0]  # the straddling block, whose keys win
    ours = isa_attention(q, k, v, nt, ISAConfig(block_size=bs), gate=gate, backend="torch")
    assert (out - ours).abs().max() > 1e-3  # the two rules give different outputs here


def test_padding_of_a_kept_last_block_enters_the_softmax():
    # S = 800 = 12 * 64 + 32: the last block has 32 zero-padded rows; make it the salient one.
    nt, ns, bs = 200, 600, 64
    q, k, v, gate = _inputs(1, nt + ns, 1, 16, seed=5, boost=(768, 800))
    out, plan = _check(q, k, v, gate, nt, bs, context_keep_ratio=0.125, full_query_ratio=0.5, exact_kv_ratio=0.0625)
    nbs = release_counts(nt, ns, ISAConfig(compat="release")).num_source_blocks
    assert plan.kept_context_blocks[0, 0].tolist() == [nbs - 1]
    # Dropping the padding rows from the full path's softmax changes the output: they are in it.
    cfg = ISAConfig(block_size=bs, compat="release")
    full_rows = plan.full_query_blocks[0, 0].tolist()
    qq, kk, vv = q[0, :, 0], k[0, :, 0], v[0, :, 0]
    real = torch.cat([kk[:nt], kk[768:800]]), torch.cat([vv[:nt], vv[768:800]])
    r = full_rows[0] * bs
    masked = torch.softmax(real[0] @ qq[r] * 0.25, 0) @ real[1]  # the same softmax without the padding rows
    routed = out[0, r, 0] - gate[0, r, 0, 0] * _coarse_row(q, k, v, cfg, r)
    assert not torch.allclose(routed, masked, atol=1e-6)


def _coarse_row(q, k, v, cfg, r):
    from liveditor.isa.release import _coarse

    c = _coarse(q, k, v, cfg)
    return c.out[0, 0, r // cfg.block_size]


def test_keeps_nbs_over_8_source_blocks_and_none_below_8():
    cfg = ISAConfig(compat="release")
    assert release_counts(42840, 42840, cfg).num_source_blocks == 670  # 960x544x81: 669 * 64 + 24 target tokens
    assert release_counts(42840, 42840, cfg).n_keep == 83
    assert release_counts(42840, 42840, ISAConfig()).num_source_blocks == 670  # same count, other blocks
    q, k, v, gate = _inputs(1, 64 * 3 + 7 * 64, 2, 16, seed=1)
    plan = plan_isa(q, k, 64 * 3, cfg)
    assert plan.kept_context_blocks.shape[-1] == 0  # 7 source blocks: none kept
    ours = plan_isa(q, k, 64 * 3, ISAConfig())
    assert ours.kept_context_blocks.shape[-1] == 1  # ours keeps at least one
    _check(q, k, v, gate, 64 * 3, 64, context_keep_ratio=0.125, full_query_ratio=0.5, exact_kv_ratio=0.0625)


def test_aligned_lengths_with_8_or_more_source_blocks_give_our_output():
    # Nt and Ns multiples of 64 and nbs >= 8: the two rule sets take the same decisions.
    q, k, v, gate = _inputs(1, 128 + 640, 2, 16, seed=7)
    ours = isa_attention(q, k, v, 128, ISAConfig(), gate=gate, backend="torch")
    release = isa_attention(q, k, v, 128, ISAConfig(compat="release"), gate=gate, backend="torch")
    torch.testing.assert_close(release, ours, rtol=1e-10, atol=1e-12)


def test_release_rules_check_their_plan():
    # The Triton backend of these rules: tests/test_isa_release_triton.py.
    q, k, v, gate = _inputs(1, 300, 1, 16, seed=2)
    cfg = ISAConfig(compat="release")
    with pytest.raises(ValueError, match="compat must be one of"):
        ISAConfig(compat="paper")
    ours_plan = plan_isa(q, k, 100, ISAConfig())
    with pytest.raises(ValueError, match="ReleasePlan"):
        isa_attention(q, k, v, 100, cfg, plan=ours_plan)
    plan = plan_isa(q, k, 100, cfg)
    with pytest.raises(ValueError, match="make a new plan"):
        isa_attention(q[:, :280], k[:, :280], v[:, :280], 90, cfg, plan=plan)
    # A plan passed again gives the same output.
    torch.testing.assert_close(isa_attention(q, k, v, 100, cfg, plan=plan), isa_attention(q, k, v, 100, cfg))


def test_release_rules_have_gradients():
    q, k, v, gate = (t.float().requires_grad_() for t in _inputs(1, 150, 2, 16, seed=4))
    out = isa_attention(q, k, v, 70, ISAConfig(block_size=16, compat="release"), gate=gate)
    out.square().sum().backward()
    for t in (q, k, v, gate):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


@pytest.mark.parametrize("compat", ["default", "release"])
def test_shared_plan_repeats_the_first_copy_decisions(compat):
    q, k, v, gate = _inputs(1, 120 + 200, 2, 16, seed=9)
    cfg = ISAConfig(block_size=16, compat=compat)
    two = lambda t: torch.cat([t, t])
    out, plan = isa_attention(two(q), two(k), two(v), 120, cfg, gate=two(gate), plan=SharedPlan(2), backend="torch", return_plan=True)
    single, single_plan = isa_attention(q, k, v, 120, cfg, gate=gate, backend="torch", return_plan=True)
    assert plan.batch_heads == (2, 2)
    assert torch.equal(plan.full_query_blocks[1], single_plan.full_query_blocks[0])
    torch.testing.assert_close(out[0], single[0])
    torch.testing.assert_close(out[1], single[0])
    with pytest.raises(ValueError, match="divisible"):
        isa_attention(q, k, v, 120, cfg, plan=SharedPlan(2))


@pytest.mark.gpu
def test_release_rules_on_cuda_and_shared_plans_with_the_triton_planner():
    q, k, v, gate = (t.float().cuda() for t in _inputs(1, 1000, 4, 64, seed=11))
    cfg = ISAConfig(compat="release")
    out, plan = isa_attention(q, k, v, 300, cfg, gate=gate, backend="auto", return_plan=True)  # auto: the kernels
    cpu_out, cpu_plan = isa_attention(q.double().cpu(), k.double().cpu(), v.double().cpu(), 300, cfg, gate=gate.double().cpu(), return_plan=True)
    assert torch.equal(plan.full_query_blocks.cpu().long(), cpu_plan.full_query_blocks)
    torch.testing.assert_close(out.double().cpu(), cpu_out, rtol=1e-3, atol=1e-4)
    two = lambda t: torch.cat([t, t]).to(torch.bfloat16)
    shared, splan = isa_attention(two(q), two(k), two(v), 300, ISAConfig(), gate=two(gate), plan=SharedPlan(2), backend="triton", return_plan=True)
    single, single_plan = isa_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 300, ISAConfig(), gate=gate.bfloat16(), backend="triton", return_plan=True)
    assert torch.equal(splan.kv_blocks[1], single_plan.kv_blocks[0])
    torch.testing.assert_close(shared[1], single[0], rtol=2e-2, atol=2e-2)
