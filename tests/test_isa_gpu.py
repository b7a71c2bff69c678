"""Compiled Triton kernels vs the exact reference on a CUDA device (run by scripts/gpu_check.sh)."""

import pytest
import torch

from isa_cases import make_qkv, rel_l2
from liveditor.isa import ISAConfig, isa_attention

pytestmark = pytest.mark.gpu

TOL = {torch.bfloat16: 1e-2, torch.float16: 1e-2, torch.float32: 1e-5}


def _captured(fn):
    """`fn()` captured in a CUDA graph and replayed, as a user's graph runs it. ISA's dense call and
    Taylor launch then run one after the other on the capturing stream (`overlap_streams` is off),
    the merge fused into the Taylor launch where the Triton kernel runs it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # warm-up outside the capture: kernel compilation, cuDNN's plan, in the eager order
    torch.cuda.current_stream().wait_stream(side)
    # The kernels only the serial order launches (the Triton Taylor launch with the merge programs,
    # where the Gluon kernel does not run) compile in a first capture, one that may load modules.
    for mode in ("relaxed", "global"):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode=mode):
            out = fn()
    graph.replay()
    torch.cuda.synchronize()
    return out.clone()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("full_path", ["triton", "sdpa", "sdpa-captured"])
@pytest.mark.parametrize("Nt,Ns,B,growing", [(1000, 1000, 1, False), (3000, 1111, 2, True), (777, 63, 2, False), (4096, 0, 1, True)])
def test_kernel_matches_reference_cuda(dtype, D, full_path, Nt, Ns, B, growing):
    if full_path.startswith("sdpa") and dtype == torch.float32:
        pytest.skip("the SDPA full path is for fp16/bf16 only")
    q, k, v = make_qkv(B, Nt, Ns, 4, D, dtype=dtype, device="cuda", growing_keys=growing)
    gate = torch.rand(B, Nt + Ns, 1, 1, device="cuda") * 0.25
    cfg = ISAConfig()
    ref, plan = isa_attention(q, k, v, Nt, cfg, gate=gate, backend="torch", return_plan=True)
    from liveditor.kernels.isa_function import isa_attention_triton

    if full_path == "sdpa-captured":  # the serial order: the dense call and the Taylor launch on one stream
        out = _captured(lambda: isa_attention_triton(q, k, v, Nt, cfg, gate=gate, plan=plan, full_path="sdpa")[0])
    else:
        out, _ = isa_attention_triton(q, k, v, Nt, cfg, gate=gate, plan=plan, full_path=full_path)
    assert torch.isfinite(out).all()
    assert rel_l2(out, ref) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("full_path", ["triton", "sdpa"])
@pytest.mark.parametrize("Nt,Ns,B,growing", [(1000, 1000, 1, False), (3000, 1111, 2, True), (777, 63, 2, False)])
def test_backward_matches_reference_cuda(dtype, D, full_path, Nt, Ns, B, growing):
    if full_path == "sdpa" and dtype == torch.float32:
        pytest.skip("the SDPA full path is for fp16/bf16 only")
    from liveditor.isa import plan_isa
    from liveditor.kernels.isa_function import isa_attention_triton

    q0, k0, v0 = make_qkv(B, Nt, Ns, 4, D, dtype=dtype, device="cuda", growing_keys=growing)
    g0 = torch.rand(B, Nt + Ns, 1, 1, device="cuda") * 0.25
    do = torch.randn_like(q0)
    cfg = ISAConfig()
    plan = plan_isa(q0, k0, Nt, cfg)
    results = []
    for backend in ("torch", "triton"):
        q, k, v = (t.clone().requires_grad_() for t in (q0, k0, v0))
        g = g0.clone().requires_grad_()
        if backend == "torch":
            out = isa_attention(q, k, v, Nt, cfg, gate=g, plan=plan, backend="torch")
        else:
            out, _ = isa_attention_triton(q, k, v, Nt, cfg, gate=g, plan=plan, full_path=full_path)
        out.backward(do)
        results.append((q.grad, k.grad, v.grad, g.grad))
    tol = {torch.bfloat16: 2e-2, torch.float32: 1e-5}[dtype]
    for got, ref in zip(results[1], results[0]):
        assert torch.isfinite(got).all()
        assert rel_l2(got, ref) <= tol


def test_inductor_compiles_a_block_with_isa_cuda():
    from liveditor.isa import ISAConfig as Cfg

    class Block(torch.nn.Module):
        def __init__(self, dim=256, heads=2):
            super().__init__()
            self.qkv = torch.nn.Linear(dim, 3 * dim)
            self.proj = torch.nn.Linear(dim, dim)
            self.heads = heads

        def forward(self, x, num_target):
            B, S, C = x.shape
            q, k, v = self.qkv(x).view(B, S, 3, self.heads, C // self.heads).unbind(2)
            out = isa_attention(q, k, v, num_target, Cfg(), gate=0.1, backend="triton")
            return self.proj(out.reshape(B, S, C))

    block = Block().cuda().to(torch.bfloat16)
    x = torch.randn(1, 1500, 256, device="cuda", dtype=torch.bfloat16)
    ref = block(x, 1000)
    ref.float().square().sum().backward()
    ref_grad = block.qkv.weight.grad.clone()
    block.zero_grad()
    out = torch.compile(block, fullgraph=True)(x, 1000)
    out.float().square().sum().backward()
    assert rel_l2(out, ref) < 1e-2
    assert rel_l2(block.qkv.weight.grad, ref_grad) < 2e-2


def test_graphed_plan_is_a_valid_plan_cuda():
    from plan_checks import assert_valid_plan
    from liveditor.isa import plan_isa

    cfg = ISAConfig()
    plans = []
    for seed in (0, 1):  # the second call replays the graph captured by the first
        q, k, _ = make_qkv(2, 3000, 1111, 4, 128, dtype=torch.bfloat16, device="cuda", seed=seed)
        plan = plan_isa(q, k, 3000, cfg)
        assert_valid_plan(plan, q, k, cfg)
        plans.append(plan)
    assert not torch.equal(plans[0].full_query_blocks, plans[1].full_query_blocks)  # no aliasing of graph buffers


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_centroid_tables_kernel_equals_its_reference_cuda(dtype):
    import math

    from liveditor.isa.plan import BlockGeometry, coarse_attention, make_plan
    from liveditor.kernels.centroids import centroid_terms, centroid_terms_reference

    Nt, Ns, bs, D = 3000, 1111, 64, 128
    cfg = ISAConfig()
    q, k, v = make_qkv(2, Nt, Ns, 4, D, dtype=torch.float32, device="cuda")
    geom = BlockGeometry.build(Nt, Ns, bs, "cuda")
    coarse = coarse_attention(q, k, v, geom, 1.0 / math.sqrt(D))
    plan = make_plan(coarse, geom, cfg)
    args = (coarse.k_mean, coarse.v_mean, geom.block_len, plan.kv_blocks, plan.taylor_exact_kv_blocks, bs)
    for a, b in zip(centroid_terms(*args, geom.num_target_blocks, dtype=dtype), centroid_terms_reference(*args, dtype=dtype)):
        assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("Nt,Ns,B,growing", [(1000, 1000, 1, False), (3000, 1111, 2, True), (777, 63, 2, False), (4096, 0, 1, True)])
def test_gluon_taylor_launch_matches_triton_launch_cuda(dtype, D, Nt, Ns, B, growing):
    """The warp-specialised Taylor kernel (Hopper) against the reference, same plan, and its launch
    against the Triton kernel's Taylor launch (the fallback where the Gluon kernel does not run);
    `test_kernel_matches_reference_cuda` runs it too, as the default on Hopper."""
    import math

    from liveditor.isa.plan import coarse_attention
    from liveditor.kernels import isa_function as F
    from liveditor.kernels import taylor_gluon
    from liveditor.kernels.centroids import centroid_terms
    from liveditor.kernels.isa_fwd import launch_isa_fwd

    q, k, v = make_qkv(B, Nt, Ns, 4, D, dtype=dtype, device="cuda", growing_keys=growing)
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon Taylor kernel is for Hopper")
    assert taylor_gluon.supported(q, k, v, 64), "Gluon missing from the installed Triton?"
    gate = torch.rand(B, Nt + Ns, 1, 1, device="cuda") * 0.25
    cfg = ISAConfig()
    ref, plan = isa_attention(q, k, v, Nt, cfg, gate=gate, backend="torch", return_plan=True)
    coarse = coarse_attention(q, k, v, plan.geometry, 1.0 / math.sqrt(D))
    out, _ = F.isa_forward(q, k, v, plan, coarse, gate=gate, full_path="sdpa")  # the Gluon kernel's Taylor launch
    assert torch.isfinite(out).all()
    assert rel_l2(out, ref) <= TOL[dtype]
    # The two Taylor launches alone, on the forward's tables: only the Taylor query blocks' rows are written.
    _, block_len, _, kv_blocks, _, taylor_q, taylor_exact = F._plan_args(plan)
    centroids = centroid_terms(coarse.k_mean, coarse.v_mean, block_len, kv_blocks, taylor_exact, 64,
                               plan.geometry.num_target_blocks, dtype=dtype)
    S, H, scale = Nt + Ns, q.shape[2], 1.0 / math.sqrt(D)
    gate_t = F._gate_table(gate, B, S, H, q.device)
    out_c = coarse.out.float().contiguous()
    outs = {}
    for kernel in ("gluon", "triton"):
        o = torch.zeros_like(q)
        lse = torch.zeros((B, H, S), dtype=torch.float32, device="cuda")
        if kernel == "gluon":
            taylor_gluon.launch_taylor(q, k, v, o, taylor_q, taylor_exact, centroids, Nt, scale, gate=gate_t,
                                       out_c=out_c, lse=lse)
        else:
            launch_isa_fwd(q, k, v, o, taylor_q, taylor_exact, num_target=Nt, scale=scale, block_size=64,
                           centroids=centroids, gate=gate_t, out_c=out_c, lse=lse)
        outs[kernel] = (o, lse)
    (out_g, lse_g), (out_t, lse_t) = outs["gluon"], outs["triton"]
    assert out_g.abs().sum() > 0
    # The same steps in the same order (bitwise equal on an H100, 2026-11-23; a margin for other GPUs).
    assert rel_l2(out_g, out_t) <= 2e-3
    assert (lse_g - lse_t).abs().max().item() <= 1e-3
