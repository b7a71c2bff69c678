"""The release's ISA rules (`ISAConfig(compat="release")`) on the Triton kernels against their torch
statement (liveditor/isa/release.py): forward given the statement's plan, the kernels' own planner,
the API's backend choice and the backward. CPU: TRITON_INTERPRET=1 at small unaligned shapes; GPU
(`gpu` mark): the release's token counts at 832x480x81 and 960x544x81."""

import pytest
import torch

from isa_cases import rel_l2
from liveditor.isa import ISAConfig, ReleasePlan, isa_attention, plan_isa
from liveditor.isa.release import plan_release, release_counts
from liveditor.kernels.release import plan_release_triton, release_attention_triton, release_forward

TOL = {torch.bfloat16: 1e-2, torch.float16: 1e-2, torch.float32: 1e-5}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PLAN_TABLES = ("kept_context_blocks", "full_query_blocks", "taylor_query_blocks", "taylor_exact_kv_blocks")


def _inputs(B, Nt, Ns, H, D, dtype, seed, boost=None, device=DEVICE):
    """Random q, k, v `[B, S, H, D]` and a gate `[B, S, 1, 1]` in [-0.125, 0.125); with `boost=(a, b)`,
    keys `[a, b)` lie along a direction every query shares, so their block wins the saliency."""
    g = torch.Generator().manual_seed(seed)
    S = Nt + Ns
    q, k, v = (torch.randn(B, S, H, D, generator=g) for _ in range(3))
    if boost is not None:
        u = torch.randn(D, generator=g)
        u = u / u.norm()
        q += 2.0 * u
        k[:, boost[0]:boost[1]] += 4.0 * u
    gate = (torch.rand(B, S, 1, 1, generator=g) - 0.5) * 0.25
    return tuple(t.to(device=device, dtype=dtype) for t in (q, k, v)) + (gate.to(device),)


# (B, Nt, Ns, H, D, block_size, context_keep_ratio, boosted keys, what the case must exercise)
CASES = {
    # Nt = 2 * 16 + 13: source block 0 straddles the boundary; its keys win, so it is kept and brings
    # target tokens 32..44 into the KV sequence a second time.
    "straddling-block-kept": (1, 45, 120, 2, 64, 16, 0.25, (32, 48), "straddle"),
    # S = 165 = 10 * 16 + 5: the last block has 11 rows of zero padding; its keys win, so the full
    # path's softmax counts its padding rows as logit-0 tokens.
    "padded-last-block-kept": (1, 45, 120, 2, 64, 16, 0.25, (160, 165), "last"),
    # 5 source blocks at the default keep ratio: none kept (the release keeps nbs // 8).
    "fewer-than-8-source-blocks": (2, 45, 60, 1, 64, 16, 0.125, None, "none"),
    # Nt a multiple of the block size: no straddling block; head dim 128.
    "aligned-target": (1, 64, 100, 1, 128, 16, 0.25, None, "aligned"),
}


def _check_case_exercises(plan, nt, ns, bs, keep, what):
    counts = release_counts(nt, ns, ISAConfig(block_size=bs, context_keep_ratio=keep, compat="release"))
    kept = plan.kept_context_blocks.long()
    if what == "straddle":
        assert nt % bs and bool((kept == 0).any(-1).all())
    elif what == "last":
        assert (nt + ns) % bs and bool((kept == counts.num_source_blocks - 1).any(-1).all())
    elif what == "none":
        assert counts.num_source_blocks < 8 and kept.shape[-1] == 0
    else:
        assert nt % bs == 0
    assert plan.full_query_blocks.shape[-1] and plan.taylor_query_blocks.shape[-1]


@pytest.mark.parametrize("case,dtype,gate_kind,full_path", [
    ("straddling-block-kept", torch.float32, "tensor", "triton"),
    ("straddling-block-kept", torch.bfloat16, None, "sdpa"),
    ("padded-last-block-kept", torch.float32, None, "sdpa"),
    ("padded-last-block-kept", torch.bfloat16, "tensor", "triton"),
    ("fewer-than-8-source-blocks", torch.float32, "float", "sdpa"),
    ("fewer-than-8-source-blocks", torch.bfloat16, "tensor", "triton"),
    ("aligned-target", torch.float32, "tensor", "sdpa"),
    ("aligned-target", torch.bfloat16, None, "triton"),
])
def test_forward_matches_the_statement_given_its_plan(case, dtype, gate_kind, full_path):
    B, nt, ns, H, D, bs, keep, boost, what = CASES[case]
    q, k, v, gate = _inputs(B, nt, ns, H, D, dtype, seed=len(case), boost=boost)
    gate = {"tensor": gate, "float": 0.2, None: None}[gate_kind]
    cfg = ISAConfig(block_size=bs, context_keep_ratio=keep, compat="release")
    ref, plan = isa_attention(q, k, v, nt, cfg, gate=gate, backend="torch", return_plan=True)
    _check_case_exercises(plan, nt, ns, bs, keep, what)
    out, used = release_forward(q, k, v, nt, cfg, gate=gate, plan=plan, full_path=full_path)
    assert used is plan and out.dtype == dtype and out.shape == q.shape
    assert torch.isfinite(out).all()
    assert rel_l2(out, ref) <= TOL[dtype], rel_l2(out, ref)


@pytest.mark.parametrize("nt,ns,keep,full,full_path", [
    (45, 0, 1.0, 0.5, "sdpa"),  # no source: the partial last target block is the one "source" block, kept
    (70, 3, 0.5, 0.0, "triton"),  # no full query block; a 3-token source, none kept
    (20, 10, 1.0, 1.0, "sdpa"),  # no Taylor query block
    (5, 40, 0.5, 0.5, "triton"),  # fewer target tokens than a block: no whole target block, no sharpness
])
def test_edge_layouts_match_the_statement(nt, ns, keep, full, full_path):
    q, k, v, _ = _inputs(1, nt, ns, 2, 32, torch.float32, seed=nt)
    cfg = ISAConfig(block_size=16, compat="release", context_keep_ratio=keep, full_query_ratio=full, exact_kv_ratio=0.3)
    ref, plan = isa_attention(q, k, v, nt, cfg, gate=0.1, backend="torch", return_plan=True)
    out, _ = release_forward(q, k, v, nt, cfg, gate=0.1, plan=plan, full_path=full_path)
    assert rel_l2(out, ref) <= TOL[torch.float32]
    own = plan_release_triton(q, k, nt, cfg)
    for name in PLAN_TABLES:
        assert torch.equal(getattr(own, name).long(), getattr(plan, name).long()), name


@pytest.mark.parametrize("nt,ns,bs,keep,boost", [(45, 120, 16, 0.25, (32, 48)), (10, 150, 16, 0.25, None),
                                                 (45, 60, 16, 0.125, None)])
def test_planner_takes_the_statements_decisions(nt, ns, bs, keep, boost):
    # Nt = 10 < bs: no whole target block, so no sharpness (routing by block order).
    q, k, _, _ = _inputs(2, nt, ns, 2, 32, torch.float32, seed=nt + ns, boost=boost)
    cfg = ISAConfig(block_size=bs, context_keep_ratio=keep, compat="release")
    got = plan_release_triton(q, k, nt, cfg)
    want = plan_release(q, k, nt, cfg)
    assert isinstance(got, ReleasePlan) and (got.num_target, got.num_context, got.block_size) == (nt, ns, bs)
    for name in PLAN_TABLES:
        assert getattr(got, name).dtype == torch.int32
        assert torch.equal(getattr(got, name).long(), getattr(want, name)), name
    torch.testing.assert_close(got.context_saliency, want.context_saliency, rtol=1e-5, atol=1e-6)


def test_kernels_plan_and_forward_through_the_api_and_reuse_the_plan():
    _, nt, ns, H, D, bs, keep, boost, _ = CASES["straddling-block-kept"]
    q, k, v, gate = _inputs(2, nt, ns, H, D, torch.float32, seed=5, boost=boost)
    cfg = ISAConfig(block_size=bs, context_keep_ratio=keep, compat="release")
    out, plan = isa_attention(q, k, v, nt, cfg, gate=gate, backend="triton", return_plan=True)
    assert isinstance(plan, ReleasePlan) and plan.full_query_blocks.dtype == torch.int32  # the kernels' planner
    ref = isa_attention(q, k, v, nt, cfg, gate=gate, backend="torch", plan=plan)  # the statement, same plan
    assert rel_l2(out, ref) <= 1e-5
    for name in PLAN_TABLES:  # the statement's own plan takes the same decisions here
        assert torch.equal(getattr(plan, name).long(), getattr(plan_isa(q, k, nt, cfg), name).long()), name
    with pytest.raises(ValueError, match="make a new plan"):
        isa_attention(q[:, :-16], k[:, :-16], v[:, :-16], nt, cfg, plan=plan, backend="triton")
    with pytest.raises(ValueError, match="ReleasePlan"):
        isa_attention(q, k, v, nt, cfg, plan=plan_isa(q, k, nt, ISAConfig(block_size=bs)), backend="triton")
    with pytest.raises(ValueError, match="not supported by the triton backend"):
        isa_attention(q.double(), k.double(), v.double(), nt, cfg, backend="triton")


def test_backward_is_the_statements():
    nt, ns, bs = 45, 60, 16
    base = _inputs(1, nt, ns, 2, 32, torch.float32, seed=3)
    cfg = ISAConfig(block_size=bs, context_keep_ratio=0.25, compat="release")
    grads = {}
    for backend in ("torch", "triton"):
        q, k, v, gate = (t.clone().requires_grad_() for t in base)
        out = isa_attention(q, k, v, nt, cfg, gate=gate, backend=backend)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads[backend] = (out.detach(), q.grad, k.grad, v.grad, gate.grad)
    for got, want in zip(grads["triton"], grads["torch"]):
        assert got is not None and rel_l2(got, want) <= 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("name,nt,heads", [("wan2.1-1.3b-832x480x81", 32760, 4), ("wan2.2-14b-960x544x81", 42840, 4)])
def test_release_shapes_match_the_statement_cuda(name, nt, heads):
    """At the release's token counts (`kernels/bench.py` SHAPES; 4 of the heads): given the
    statement's plan, within bf16 rounding; with the kernels' own plan (`backend="auto"`), the same
    decisions up to near-ties and the same output to bf16 rounding."""
    q, k, v, gate = _inputs(1, nt, nt, heads, 128, torch.bfloat16, seed=0, device="cuda")
    cfg = ISAConfig(compat="release")
    ref, plan = isa_attention(q, k, v, nt, cfg, gate=gate, backend="torch", return_plan=True)
    for full_path in ("sdpa", "triton"):
        out, _ = release_forward(q, k, v, nt, cfg, gate=gate, plan=plan, full_path=full_path)
        assert rel_l2(out, ref) <= TOL[torch.bfloat16], (full_path, rel_l2(out, ref))
    out, own = isa_attention(q, k, v, nt, cfg, gate=gate, backend="auto", return_plan=True)
    assert own.full_query_blocks.dtype == torch.int32  # auto took the kernels on CUDA
    assert rel_l2(out, ref) <= 2e-2
    for table in ("kept_context_blocks", "full_query_blocks"):
        a, b = getattr(own, table).long(), getattr(plan, table).long()
        shared = (a.unsqueeze(-1) == b.unsqueeze(-2)).any(-1).float().mean()  # of the chosen blocks, per head
        assert float(shared) >= 0.99, table


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("nt,ns,B", [(1000, 1000, 1), (3000, 1111, 2), (777, 300, 2), (100, 63, 1)])
def test_forward_matches_the_statement_cuda(dtype, nt, ns, B):
    """Both full-path routes and the Gluon Taylor kernel (bf16/fp16 on Hopper) against the statement,
    given its plan; also under CUDA-graph capture (the serial order, the merge fused)."""
    q, k, v, gate = _inputs(B, nt, ns, 4, 128, dtype, seed=nt, device="cuda")
    cfg = ISAConfig(compat="release", context_keep_ratio=0.25)
    ref, plan = isa_attention(q, k, v, nt, cfg, gate=gate, backend="torch", return_plan=True)
    routes = ("triton",) if dtype == torch.float32 else ("triton", "sdpa")
    for full_path in routes:
        out, _ = release_forward(q, k, v, nt, cfg, gate=gate, plan=plan, full_path=full_path)
        assert rel_l2(out, ref) <= TOL[dtype], (full_path, rel_l2(out, ref))
    if dtype != torch.float32:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            release_forward(q, k, v, nt, cfg, gate=gate, plan=plan)  # warm-up outside the capture
        torch.cuda.current_stream().wait_stream(side)
        for mode in ("relaxed", "global"):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode=mode):
                captured, _ = release_forward(q, k, v, nt, cfg, gate=gate, plan=plan)
        graph.replay()
        torch.cuda.synchronize()
        assert rel_l2(captured, ref) <= TOL[dtype]


@pytest.mark.gpu
def test_auto_backend_takes_the_kernels_for_both_rule_sets_cuda():
    q, k, v, gate = _inputs(2, 1000, 1000, 2, 64, torch.bfloat16, seed=1, device="cuda")
    for compat in ("default", "release"):
        out, plan = isa_attention(q, k, v, 1000, ISAConfig(compat=compat), gate=gate, backend="auto", return_plan=True)
        if compat == "release":  # the kernels' planner (int32 tables), not the statement's (int64)
            assert isinstance(plan, ReleasePlan) and plan.full_query_blocks.dtype == torch.int32
        ref = isa_attention(q, k, v, 1000, ISAConfig(compat=compat), gate=gate, backend="torch", plan=plan)
        assert rel_l2(out, ref) <= TOL[torch.bfloat16], compat
        with torch.no_grad():  # the same forward as the explicit backend's
            explicit = isa_attention(q, k, v, 1000, ISAConfig(compat=compat), gate=gate, backend="triton", plan=plan)
        assert torch.equal(out, explicit), compat
    cfg = ISAConfig(compat="release")
    out, plan = release_attention_triton(q, k, v, 1000, cfg, gate=gate)
    alone = plan_isa(q, k, 1000, cfg)  # plan_isa takes the kernels' planner on CUDA too
    assert alone.full_query_blocks.dtype == torch.int32
    for name in PLAN_TABLES:
        assert torch.equal(getattr(alone, name), getattr(plan, name)), name
    # One routing for the two equal halves of a CFG batch (SharedPlan), through the kernels.
    from liveditor.isa import SharedPlan

    two = lambda t: torch.cat([t[:1], t[:1]])
    shared, splan = isa_attention(two(q), two(k), two(v), 1000, cfg, gate=two(gate), plan=SharedPlan(2), return_plan=True)
    assert splan.full_query_blocks.dtype == torch.int32 and torch.equal(splan.full_query_blocks[1], alone.full_query_blocks[0])
    torch.testing.assert_close(shared[0], shared[1])
    torch.testing.assert_close(shared[0], out[0])
