"""The exact reference against a brute-force float64 statement of DESIGN.md's math, plan
invariants, and input validation."""

import math

import pytest
import torch

from isa_cases import make_qkv, rel_l2
from liveditor.isa import ISAConfig, context_coverage, isa_attention, plan_isa, plan_release


def brute_force(q, k, v, Nt, cfg, gate=None):
    """DESIGN.md "ISA: the contract", steps 1-7, one (batch, head) and one token at a time."""
    B, S, H, D = q.shape
    bs = cfg.block_size
    scale = 1.0 / math.sqrt(D)
    blocks = [(s, min(bs, Nt - s)) for s in range(0, Nt, bs)] + [(Nt + s, min(bs, S - Nt - s)) for s in range(0, S - Nt, bs)]
    nbt = len(range(0, Nt, bs))
    nb = len(blocks)
    nbs = nb - nbt
    out = torch.zeros(B, S, H, D, dtype=torch.float64)
    decisions = {}
    for b in range(B):
        for h in range(H):
            qq, kk, vv = (t[b, :, h].double() for t in (q, k, v))
            qc = torch.stack([qq[s : s + n].mean(0) for s, n in blocks])
            kc = torch.stack([kk[s : s + n].mean(0) for s, n in blocks])
            vc = torch.stack([vv[s : s + n].mean(0) for s, n in blocks])
            P = torch.softmax(qc @ kc.T * scale, dim=-1)
            out_c = P @ vc
            # 3. context pre-selection
            sal = [sum(P[i, nbt + j].item() for i in range(nbt)) for j in range(nbs)]
            n_keep = max(1, math.floor(cfg.context_keep_ratio * nbs)) if nbs else 0
            kept = sorted(sorted(range(nbs), key=lambda j: (-sal[j], j))[:n_keep])
            kv_set = list(range(nbt)) + [nbt + j for j in kept]
            # 4. sharpness
            n_sharp = min(nbt, max(1, math.floor(cfg.exact_kv_ratio * nbt)))
            sharp = [sum(sorted(P[i, :nbt].tolist(), reverse=True)[:n_sharp]) for i in range(nb)]
            # 5. routing
            n_full = math.floor(cfg.full_query_ratio * nb)
            full = set(sorted(range(nb), key=lambda i: (-sharp[i], i))[:n_full])
            n_exact = min(len(kv_set), max(1, math.floor(cfg.exact_kv_ratio * len(kv_set))))
            for i, (qs, qn) in enumerate(blocks):
                if i in full:
                    exact, cents = kv_set, []
                else:
                    aff = {j: (qc[i] @ kc[j]).item() for j in kv_set}
                    exact = sorted(sorted(kv_set, key=lambda j: (-aff[j], j))[:n_exact])
                    cents = [j for j in kv_set if j not in exact]
                decisions[(b, h, i)] = (i in full, tuple(exact))
                for t in range(qs, qs + qn):
                    num = torch.zeros(D, dtype=torch.float64)
                    den = 0.0
                    logits = []
                    for j in exact:
                        s0, n0 = blocks[j]
                        for u in range(s0, s0 + n0):
                            logits.append(((qq[t] @ kk[u]) * scale, 1.0, vv[u]))
                    for j in cents:
                        s0, n0 = blocks[j]
                        logits.append(((qq[t] @ kc[j]) * scale, float(n0), vv[s0 : s0 + n0].sum(0) / n0))
                    m = max(l.item() for l, _, _ in logits)
                    for l, w, val in logits:
                        e = w * math.exp(l.item() - m)
                        num += e * val
                        den += e
                    out[b, t, h] = num / den
                    if gate is not None:
                        g = gate if isinstance(gate, float) else gate.expand(B, S, H, 1)[b, t, h, 0].item()
                        out[b, t, h] += g * out_c[i]
    return out, decisions


@pytest.mark.parametrize(
    "B,Nt,Ns,H,D,bs",
    [(1, 100, 37, 2, 8, 16), (2, 45, 70, 1, 4, 8), (1, 5, 3, 2, 4, 16), (1, 40, 0, 1, 4, 8), (2, 33, 31, 2, 8, 8)],
)
@pytest.mark.parametrize("use_gate", [False, True])
def test_reference_matches_brute_force_float64(B, Nt, Ns, H, D, bs, use_gate):
    q, k, v = make_qkv(B, Nt, Ns, H, D, dtype=torch.float64, growing_keys=True)
    cfg = ISAConfig(block_size=bs, context_keep_ratio=0.3, full_query_ratio=0.4, exact_kv_ratio=0.25)
    gate = torch.rand(B, Nt + Ns, 1, 1, dtype=torch.float64) if use_gate else None
    out, plan = isa_attention(q, k, v, Nt, cfg, gate=gate, backend="torch", return_plan=True)
    expected, decisions = brute_force(q, k, v, Nt, cfg, gate=gate)
    assert rel_l2(out, expected) < 1e-12
    full = plan.full_query_blocks
    for b in range(B):
        for h in range(H):
            taylor = plan.taylor_query_blocks[b, h].tolist()
            for i, (is_full, exact) in ((i, decisions[(b, h, i)]) for i in range(plan.geometry.num_blocks)):
                assert is_full == (i in full[b, h].tolist())
                if not is_full:
                    assert tuple(plan.taylor_exact_kv_blocks[b, h, taylor.index(i)].tolist()) == exact


def test_all_ratios_one_is_dense_attention():
    q, k, v = make_qkv(2, 100, 60, 3, 16, dtype=torch.float64)
    cfg = ISAConfig(block_size=16, context_keep_ratio=1.0, full_query_ratio=1.0, exact_kv_ratio=1.0)
    out = isa_attention(q, k, v, 100, cfg, backend="torch")
    dense = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    assert rel_l2(out, dense) < 1e-12


def test_centroids_make_taylor_exact_for_constant_blocks():
    # When every token of a block has the same key and value, its centroid term is exact.
    B, Nt, Ns, H, D, bs = 1, 64, 32, 2, 8, 16
    q, k, v = make_qkv(B, Nt, Ns, H, D, dtype=torch.float64)
    k = k[:, ::bs].repeat_interleave(bs, dim=1)
    v = v[:, ::bs].repeat_interleave(bs, dim=1)
    cfg = ISAConfig(block_size=bs, context_keep_ratio=1.0, full_query_ratio=0.0, exact_kv_ratio=0.0)
    out = isa_attention(q, k, v, Nt, cfg, backend="torch")
    dense = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    assert rel_l2(out, dense) < 1e-12


@pytest.mark.parametrize("Nt,Ns,bs", [(1000, 400, 64), (100, 37, 16), (64, 0, 64), (10, 200, 32), (0, 50, 16)])
def test_plan_invariants(Nt, Ns, bs):
    cfg = ISAConfig(block_size=bs)
    q, k, _ = make_qkv(2, Nt, Ns, 3, 16)
    plan = plan_isa(q, k, Nt, cfg)
    g = plan.geometry
    nbt, nbs, nb = -(-Nt // bs), -(-Ns // bs), g.num_blocks
    assert (g.num_target_blocks, g.num_context_blocks, nb) == (nbt, nbs, nbt + nbs)
    assert int(g.block_len.sum()) == Nt + Ns and int(g.block_len.min()) >= 1
    n_keep = max(1, math.floor(cfg.context_keep_ratio * nbs)) if nbs else 0
    n_kv = nbt + n_keep
    n_full = math.floor(cfg.full_query_ratio * nb)
    n_exact = max(1, math.floor(cfg.exact_kv_ratio * n_kv))
    assert plan.kept_context_blocks.shape == (2, 3, n_keep)
    assert plan.kv_blocks.shape == (2, 3, n_kv)
    assert plan.full_query_blocks.shape == (2, 3, n_full)
    assert plan.taylor_query_blocks.shape == (2, 3, nb - n_full)
    assert plan.taylor_exact_kv_blocks.shape == (2, 3, nb - n_full, n_exact)
    assert plan.taylor_centroid_kv_blocks.shape == (2, 3, nb - n_full, n_kv - n_exact)
    for b in range(2):
        for h in range(3):
            kept = plan.kept_context_blocks[b, h].tolist()
            assert kept == sorted(set(kept)) and all(nbt <= j < nb for j in kept)
            assert plan.kv_blocks[b, h].tolist() == list(range(nbt)) + kept
            routed = plan.full_query_blocks[b, h].tolist() + plan.taylor_query_blocks[b, h].tolist()
            assert sorted(routed) == list(range(nb))
            for t in range(nb - n_full):
                ex = plan.taylor_exact_kv_blocks[b, h, t].tolist()
                ce = plan.taylor_centroid_kv_blocks[b, h, t].tolist()
                assert ex == sorted(set(ex)) and ce == sorted(set(ce))
                assert sorted(ex + ce) == sorted(plan.kv_blocks[b, h].tolist())


def test_ties_break_toward_lower_block_index():
    # Constant q and k: every coarse probability, sharpness and affinity ties.
    B, Nt, Ns, H, D, bs = 1, 256, 512, 2, 8, 32
    q = torch.ones(B, Nt + Ns, H, D)
    k = torch.ones(B, Nt + Ns, H, D)
    cfg = ISAConfig(block_size=bs, context_keep_ratio=0.25, full_query_ratio=0.5, exact_kv_ratio=0.25)
    plan = plan_isa(q, k, Nt, cfg)
    nbt, nbs = 8, 16
    assert plan.kept_context_blocks[0, 0].tolist() == [nbt + j for j in range(4)]
    assert plan.full_query_blocks[0, 0].tolist() == list(range(12))
    assert plan.taylor_query_blocks[0, 0].tolist() == list(range(12, 24))
    assert plan.taylor_exact_kv_blocks[0, 0, 0].tolist() == [0, 1, 2]


def test_context_coverage_counts_the_source_blocks_some_block_and_head_keeps():
    """The union over plans (layers) and heads of the kept context blocks, per batch element, over nbs;
    release plans number their kept blocks from the context's start, default plans globally."""
    Nt, Ns, bs, H = 64, 320, 16, 2  # 4 target blocks, 20 context blocks, keep 2 per head
    cfg = ISAConfig(block_size=bs, context_keep_ratio=0.125)
    plans = [plan_isa(*make_qkv(3, Nt, Ns, H, 8, seed=seed)[:2], Nt, cfg) for seed in range(3)]
    expected = []
    for b in range(3):
        kept = {int(j) - Nt // bs for p in plans for j in p.kept_context_blocks[b].flatten()}
        expected.append(len(kept) / 20)
    got = context_coverage(plans + [None])  # a dense block's None is skipped
    assert got.tolist() == pytest.approx(expected)
    assert all(0.1 <= c <= min(1.0, 3 * H * 2 / 20) for c in got.tolist())
    assert context_coverage(plans[:1]).tolist() == pytest.approx(
        [len(set(plans[0].kept_context_blocks[b].flatten().tolist())) / 20 for b in range(3)])
    everything = plan_isa(*make_qkv(3, Nt, Ns, H, 8)[:2], Nt, ISAConfig(block_size=bs, context_keep_ratio=1.0))
    assert context_coverage([everything]).tolist() == [1.0, 1.0, 1.0]
    release = plan_release(*make_qkv(3, Nt, Ns, H, 8)[:2], Nt, ISAConfig(block_size=bs, compat="release"))
    assert context_coverage([release]).tolist() == pytest.approx(
        [len(set(release.kept_context_blocks[b].flatten().tolist())) / release.context_saliency.shape[-1] for b in range(3)])
    with pytest.raises(ValueError, match="no ISA plans"):
        context_coverage([None, None])


def test_plan_reuse_and_gate_forms():
    q, k, v = make_qkv(2, 130, 70, 2, 16)
    cfg = ISAConfig(block_size=16)
    out1, plan = isa_attention(q, k, v, 130, cfg, backend="torch", return_plan=True)
    out2 = isa_attention(q, k, v, 130, cfg, plan=plan, backend="torch")
    assert torch.equal(out1, out2)
    # Reusing the plan on new inputs (the next denoising step) keeps the routing fixed.
    q2 = q + 0.01 * torch.randn_like(q)
    out3, plan3 = isa_attention(q2, k, v, 130, cfg, plan=plan, backend="torch", return_plan=True)
    assert plan3 is plan and not torch.equal(out3, out1)
    g_float = isa_attention(q, k, v, 130, cfg, gate=0.3, plan=plan, backend="torch")
    g_tensor = isa_attention(q, k, v, 130, cfg, gate=torch.full((2, 200, 1, 1), 0.3), plan=plan, backend="torch")
    assert torch.allclose(g_float, g_tensor, atol=1e-6)
    assert torch.equal(isa_attention(q, k, v, 130, cfg, gate=0.0, plan=plan, backend="torch"), out1)
    per_head = torch.rand(1, 1, 2, 1)
    isa_attention(q, k, v, 130, cfg, gate=per_head, plan=plan, backend="torch")


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda q, k, v, n: (q[0], k, v, n), "q must have rank 4"),
        (lambda q, k, v, n: (q, k[:, :-1], v, n), "k shape"),
        (lambda q, k, v, n: (q, k, v.half(), n), "v dtype"),
        (lambda q, k, v, n: (q.int(), k.int(), v.int(), n), "q has unsupported dtype"),
        (lambda q, k, v, n: (q, k, v, 999), "num_target=999 is outside"),
        (lambda q, k, v, n: (q, k, v, -1), "num_target=-1 is outside"),
        (lambda q, k, v, n: (q, k, v, 3.0), "num_target must be an int"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(mutate, match):
    q, k, v = make_qkv(1, 20, 10, 2, 8)
    with pytest.raises(ValueError, match=match):
        isa_attention(*mutate(q, k, v, 20), backend="torch")


def test_bad_gate_plan_and_backend():
    q, k, v = make_qkv(1, 20, 10, 2, 8)
    with pytest.raises(ValueError, match="gate of shape"):
        isa_attention(q, k, v, 20, gate=torch.ones(1, 30, 3, 1), backend="torch")
    with pytest.raises(ValueError, match="backend must be one of"):
        isa_attention(q, k, v, 20, backend="cuda")
    plan = plan_isa(q, k, 20)
    with pytest.raises(ValueError, match="plan was made for num_target=20"):
        isa_attention(q, k, v, 15, plan=plan, backend="torch")
    with pytest.raises(ValueError, match="not supported by the triton backend"):
        isa_attention(q.double(), k.double(), v.double(), 20, backend="triton")
    with pytest.raises(ValueError, match="context_keep_ratio must lie in"):
        ISAConfig(context_keep_ratio=1.5)
