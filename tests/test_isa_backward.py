"""ISA gradients: the reference against finite differences, the Triton backward against the
reference with the same plan, and `torch.compile` over a block that uses the custom op."""

import pytest
import torch

from isa_cases import make_qkv, rel_l2
from liveditor.isa import ISAConfig, isa_attention, plan_isa
from liveditor.kernels.isa_function import isa_attention_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.bfloat16: 2e-2, torch.float32: 1e-5}


@pytest.mark.parametrize("Nt,Ns,with_gate", [(11, 7, True), (9, 0, False), (16, 13, True)])
def test_reference_gradcheck_float64(Nt, Ns, with_gate):
    q, k, v = make_qkv(1, Nt, Ns, 2, 4, dtype=torch.float64, growing_keys=True)
    cfg = ISAConfig(block_size=4, context_keep_ratio=0.5, full_query_ratio=0.4, exact_kv_ratio=0.3)
    plan = plan_isa(q, k, Nt, cfg)
    gate = torch.rand(1, Nt + Ns, 1, 1, dtype=torch.float64) if with_gate else None
    inputs = [t.clone().requires_grad_() for t in (q, k, v)] + ([gate.requires_grad_()] if with_gate else [])

    def fn(*args):
        g = args[3] if with_gate else None
        return isa_attention(args[0], args[1], args[2], Nt, cfg, gate=g, plan=plan, backend="torch")

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


def _grads(q0, k0, v0, g0, do, Nt, cfg, plan, backend, full_path="auto"):
    q, k, v = (t.clone().requires_grad_() for t in (q0, k0, v0))
    g = g0.clone().requires_grad_() if g0 is not None else None
    if backend == "torch":
        out = isa_attention(q, k, v, Nt, cfg, gate=g, plan=plan, backend="torch")
    else:
        out, _ = isa_attention_triton(q, k, v, Nt, cfg, gate=g, plan=plan, full_path=full_path)
    out.backward(do)
    return [out, q.grad, k.grad, v.grad] + ([g.grad] if g is not None else [])


CASES = [
    pytest.param(1, 100, 37, 64, 64, False, True, id="odd-lengths"),
    pytest.param(2, 100, 37, 128, 32, True, True, id="batch2-d128-growing"),
    pytest.param(2, 70, 0, 64, 32, True, False, id="no-context-no-gate"),
    pytest.param(1, 30, 10, 64, 64, False, True, id="segments-shorter-than-a-block"),
    pytest.param(1, 150, 90, 64, 16, True, True, id="many-blocks-growing"),
]


@pytest.mark.parametrize("B,Nt,Ns,D,bs,growing,with_gate", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("full_path", ["triton", "sdpa"])
def test_kernel_gradients_match_reference(B, Nt, Ns, D, bs, growing, with_gate, dtype, full_path):
    q, k, v = make_qkv(B, Nt, Ns, 2, D, dtype=dtype, device=DEVICE, growing_keys=growing, seed=7 + Nt)
    cfg = ISAConfig(block_size=bs, context_keep_ratio=0.5, exact_kv_ratio=0.25)
    plan = plan_isa(q, k, Nt, cfg)
    gate = torch.rand(B, Nt + Ns, 1, 1, device=DEVICE) * 0.5 if with_gate else None
    do = torch.randn_like(q)
    ref = _grads(q, k, v, gate, do, Nt, cfg, plan, "torch")
    got = _grads(q, k, v, gate, do, Nt, cfg, plan, "triton", full_path)
    for name, a, b in zip(["out", "dq", "dk", "dv", "dgate"], got, ref):
        assert torch.isfinite(a).all(), name
        assert rel_l2(a, b) <= TOL[dtype], name


def test_centroid_gradient_reaches_every_token_of_its_block():
    # No full queries, one exact KV block per Taylor block: most KV blocks enter only as centroids,
    # so their values' gradient is the centroid's, spread evenly over the block's tokens.
    B, Nt, Ns, H, D, bs = 1, 128, 0, 1, 32, 32
    q, k, v = make_qkv(B, Nt, Ns, H, D, device=DEVICE)
    cfg = ISAConfig(block_size=bs, full_query_ratio=0.0, exact_kv_ratio=0.0)
    plan = plan_isa(q, k, Nt, cfg)
    exact = set(plan.taylor_exact_kv_blocks.flatten().tolist())
    only_centroid = [j for j in range(4) if j not in exact]
    assert only_centroid, "the routing should leave some block as a centroid for every query"
    v = v.clone().requires_grad_()
    out, _ = isa_attention_triton(q, k, v, Nt, cfg, plan=plan)
    out.sum().backward()
    for j in only_centroid:
        grad_block = v.grad[0, j * bs : (j + 1) * bs, 0]
        assert grad_block.abs().sum() > 0
        assert torch.allclose(grad_block, grad_block[:1].expand_as(grad_block), atol=1e-6)


class _Block(torch.nn.Module):
    def __init__(self, dim=64, heads=2):
        super().__init__()
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.alpha_1 = torch.nn.Linear(dim, 1, bias=False)
        self.heads = heads

    def forward(self, x, num_target):
        B, S, C = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.heads, C // self.heads).unbind(2)
        gate = ((torch.sigmoid(self.alpha_1(x)) - 0.5) * 0.5).view(B, S, 1, 1)
        out = isa_attention(q, k, v, num_target, ISAConfig(block_size=16), gate=gate, backend="triton")
        return self.proj(out.reshape(B, S, C))


def test_torch_compile_traces_isa_without_graph_breaks():
    torch.manual_seed(0)
    block = _Block().to(DEVICE)
    x = torch.randn(2, 50, 64, device=DEVICE)
    ref = block(x, 30)
    ref.square().sum().backward()
    ref_grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    out = compiled(x, 30)
    out.square().sum().backward()
    assert torch.allclose(out, ref, atol=1e-5)
    for p, g in zip(block.parameters(), ref_grads):
        assert torch.allclose(p.grad, g, atol=1e-4)


def test_custom_op_registration_passes_opcheck():
    from liveditor.isa.plan import BlockGeometry
    from liveditor.kernels.isa_function import _plan_args, block_means, isa_attention_fwd

    q, k, v = make_qkv(1, 40, 20, 2, 16, device=DEVICE)
    cfg = ISAConfig(block_size=16)
    plan = plan_isa(q, k, 40, cfg)
    means = block_means(q, k, v, plan.geometry)
    gate = torch.rand(1, 60, 2, device=DEVICE)
    args = (q.clone().requires_grad_(), k.clone().requires_grad_(), v.clone().requires_grad_(), gate.requires_grad_(),
            *means, None, None, *_plan_args(plan), 16, 40, "triton", 2)
    # test_aot_dispatch_dynamic traces the autograd backward with fake tensors outside Dynamo, where
    # `torch.compiler.is_compiling()` is False, as Inductor's backward trace did on an H100 (issue 28):
    # any Triton launch in the backward formula, outside the backward op, fails there.
    torch.library.opcheck(isa_attention_fwd, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration",
                                                                "test_aot_dispatch_dynamic"))


def test_backward_keeps_what_dense_attention_keeps_plus_the_gate_and_plan():
    # Saved for the backward: q, k, v, out, lse (as dense attention), the gate and the plan's small index
    # tensors; the fp32 block means are pooled again in the backward, not kept alive (training memory).
    q0, k0, v0 = make_qkv(1, 40, 24, 2, 16, device=DEVICE)
    cfg = ISAConfig(block_size=8, context_keep_ratio=0.5, full_query_ratio=0.5, exact_kv_ratio=0.25)
    q, k, v = (t.clone().requires_grad_() for t in (q0, k0, v0))
    gate = torch.rand(1, 64, 1, 1, device=DEVICE, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, plan = isa_attention_triton(q, k, v, 40, cfg, gate=gate)
    means_shape = (1, 2, plan.geometry.num_blocks, 16)
    assert not [t for t in saved if tuple(t.shape) == means_shape and t.dtype == torch.float32]
    big = sorted(tuple(t.shape) for t in saved if t.numel() >= q.numel())
    assert big == sorted([tuple(q.shape)] * 4)  # q, k, v, out
    # The backward (means pooled again) gives the gradients of the torch reference with the same plan.
    do = torch.randn_like(out)
    out.backward(do)
    ref = _grads(q0, k0, v0, gate.detach(), do, 40, cfg, plan, "torch")
    for got, want in zip([out, q.grad, k.grad, v.grad, gate.grad], ref):
        assert rel_l2(got, want) < 1e-4
