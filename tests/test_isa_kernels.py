"""Triton forward kernels vs the exact reference with the same plan (TRITON_INTERPRET=1 on CPU)."""

import pytest
import torch

from isa_cases import make_qkv, rel_l2
from liveditor.isa import ISAConfig, isa_attention
from liveditor.kernels.isa_function import isa_attention_triton

TOL = {torch.bfloat16: 1e-2, torch.float16: 1e-2, torch.float32: 1e-5}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

CASES = [
    # B, Nt, Ns, H, D, block_size, growing key norms
    pytest.param(1, 100, 37, 2, 64, 64, False, id="odd-lengths"),
    pytest.param(2, 100, 37, 1, 128, 64, True, id="batch2-d128-growing"),
    pytest.param(1, 30, 10, 2, 64, 64, False, id="segments-shorter-than-a-block"),
    pytest.param(2, 150, 0, 1, 64, 64, True, id="no-context"),
    pytest.param(1, 301, 170, 1, 64, 32, True, id="many-blocks-growing"),
    pytest.param(2, 77, 45, 1, 128, 16, False, id="small-blocks-d128"),
]


@pytest.mark.parametrize("B,Nt,Ns,H,D,bs,growing", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("full_path", ["triton", "sdpa", "sdpa-merge-alone"])
def test_forward_kernel_matches_reference(B, Nt, Ns, H, D, bs, growing, dtype, full_path):
    # "sdpa-merge-alone": every query block full, no Taylor launch, so the merge after the dense call
    # is a launch of its own, as it is beside the Gluon Taylor kernel or the overlapped dense call.
    full_query_ratio = 1.0 if full_path == "sdpa-merge-alone" else 0.5
    full_path = full_path.split("-")[0]
    q, k, v = make_qkv(B, Nt, Ns, H, D, dtype=dtype, device=DEVICE, growing_keys=growing, seed=Nt + Ns)
    cfg = ISAConfig(block_size=bs, context_keep_ratio=0.5, full_query_ratio=full_query_ratio, exact_kv_ratio=0.25)
    gate = torch.rand(B, Nt + Ns, 1, 1, device=DEVICE) * 0.25
    ref, plan = isa_attention(q, k, v, Nt, cfg, gate=gate, backend="torch", return_plan=True)
    out, _ = isa_attention_triton(q, k, v, Nt, cfg, gate=gate, plan=plan, full_path=full_path)
    assert out.dtype == dtype and out.shape == q.shape
    assert torch.isfinite(out).all()
    assert rel_l2(out, ref) <= TOL[dtype]


def test_kernel_writes_every_output_and_handles_strided_inputs():
    # Inputs as views of a fused qkv projection ([B, S, 3, H, D]); no gate.
    B, Nt, Ns, H, D = 1, 90, 50, 2, 64
    qkv = torch.randn(B, Nt + Ns, 3, H, D, device=DEVICE)
    q, k, v = qkv.unbind(2)
    cfg = ISAConfig(block_size=32)
    ref, plan = isa_attention(q, k, v, Nt, cfg, backend="torch", return_plan=True)
    out = isa_attention(q, k, v, Nt, cfg, plan=plan, backend="triton")
    assert torch.isfinite(out).all()
    assert rel_l2(out, ref) <= 1e-5


def test_block_pooling_copies_the_dense_kv_sets_target_tokens_in_the_same_pass():
    from liveditor.isa.plan import BlockGeometry, pool_blocks
    from liveditor.kernels.pool import pool_blocks_many

    B, Nt, Ns, H, D = 2, 100, 37, 3, 64  # a partial block at the end of each segment
    q, k, v = make_qkv(B, Nt, Ns, H, D, dtype=torch.bfloat16, device=DEVICE)
    geom = BlockGeometry.build(Nt, Ns, 32, DEVICE)
    buf = torch.full((2, B, Nt + 64, H, D), float("nan"), dtype=k.dtype, device=DEVICE)
    sums = pool_blocks_many((q, k, v), geom, copy_to=(buf[0], buf[1]))
    for got, x in zip(sums, (q, k, v)):
        assert torch.allclose(got, pool_blocks(x, geom), rtol=1e-5, atol=1e-4)
    assert torch.equal(buf[0, :, :Nt], k[:, :Nt]) and torch.equal(buf[1, :, :Nt], v[:, :Nt])
    assert buf[:, :, Nt:].isnan().all()  # only the target tokens
    # Inputs of unequal strides take the PyTorch pooling and a plain copy: the same buffer contents.
    from liveditor.kernels.isa_function import block_means

    buf2 = torch.full_like(buf, float("nan"))
    means = block_means(q, k.contiguous(), v.transpose(1, 2).contiguous().transpose(1, 2), geom, kv_target=buf2)
    assert torch.equal(buf2[:, :, :Nt], buf[:, :, :Nt]) and buf2[:, :, Nt:].isnan().all()
    counts = geom.block_len.float().view(1, 1, -1, 1)
    assert torch.allclose(means[2], sums[2] / counts, rtol=1e-5, atol=1e-5)
    # The kernel's means are its sums over the token count, rounded the same way.
    for got, total in zip(pool_blocks_many((q, k, v), geom, mean=True), sums):
        assert torch.equal(got, total / counts)
    with pytest.raises(ValueError, match=r"copy_to\[1\]"):
        pool_blocks_many((q, k, v), geom, copy_to=(buf[0], buf[1, :, :Nt - 1]))
    with pytest.raises(ValueError, match="copy_to needs three inputs"):
        pool_blocks_many((q, k), geom, copy_to=(buf[0], buf[1]))


@pytest.mark.parametrize("Nt,Ns,bs,D,dtype", [(1000, 400, 64, 64, torch.bfloat16), (100, 37, 16, 128, torch.float32),
                                              (10, 200, 32, 64, torch.float16), (300, 0, 32, 64, torch.bfloat16)])
def test_centroid_tables_kernel_matches_its_reference(Nt, Ns, bs, D, dtype):
    import math

    from liveditor.isa.plan import BlockGeometry, coarse_attention, make_plan
    from liveditor.kernels.centroids import centroid_terms, centroid_terms_reference

    cfg = ISAConfig(block_size=bs, context_keep_ratio=0.5, exact_kv_ratio=0.25)
    q, k, v = make_qkv(2, Nt, Ns, 3, D, device=DEVICE)
    geom = BlockGeometry.build(Nt, Ns, bs, DEVICE)
    coarse = coarse_attention(q, k, v, geom, 1.0 / math.sqrt(D))
    plan = make_plan(coarse, geom, cfg)
    args = (coarse.k_mean, coarse.v_mean, geom.block_len, plan.kv_blocks, plan.taylor_exact_kv_blocks, bs)
    got = centroid_terms(*args, geom.num_target_blocks, dtype=dtype)
    ref = centroid_terms_reference(*args, dtype=dtype)
    n_kv = plan.kv_blocks.shape[-1]
    assert got.bias.shape[-1] % bs == 0 and got.bias.shape[-1] >= n_kv  # padded to whole blocks
    for a, b in zip(got, ref):
        assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(got.bias, ref.bias)  # the -inf slots included
    # The means' cast to fp16/bf16: the interpreter may round differently from the GPU's
    # round-to-nearest, by one unit in the last place (tests/test_isa_gpu.py checks equality on CUDA).
    ulp = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10, torch.float32: 0.0}[dtype]
    for a, b in ((got.k_mean, ref.k_mean), (got.v_mean, ref.v_mean)):
        torch.testing.assert_close(a.float(), b.float(), rtol=ulp, atol=0.0)
    # Every exact block's slot is -inf, and only those among the real slots.
    n_exact = plan.taylor_exact_kv_blocks.shape[-1]
    assert bool((got.bias[..., :n_kv] == float("-inf")).sum(-1).eq(n_exact).all())
    with pytest.raises(ValueError, match="block_len"):
        centroid_terms(coarse.k_mean, coarse.v_mean, geom.block_len[:-1], plan.kv_blocks, plan.taylor_exact_kv_blocks, bs,
                       geom.num_target_blocks)
    with pytest.raises(ValueError, match="num_target_blocks"):
        centroid_terms(*args, n_kv + 1)


def test_running_max_rises_through_centroid_terms():
    # Keys whose norms grow steeply: the largest logit of a row sits in a late centroid term, so
    # a kernel that froze its running max after the exact blocks would overflow or lose mass.
    B, Nt, Ns, H, D = 1, 256, 128, 1, 64
    q, k, v = make_qkv(B, Nt, Ns, H, D, growing_keys=True, device=DEVICE)
    k = k * torch.linspace(0.1, 6.0, Nt + Ns, device=DEVICE).view(1, -1, 1, 1)
    cfg = ISAConfig(block_size=32, full_query_ratio=0.0, exact_kv_ratio=0.1, context_keep_ratio=1.0)
    ref, plan = isa_attention(q, k, v, Nt, cfg, backend="torch", return_plan=True)
    out, _ = isa_attention_triton(q, k, v, Nt, cfg, plan=plan)
    assert torch.isfinite(out).all()
    assert rel_l2(out, ref) <= 1e-5


@pytest.mark.parametrize("Nt,Ns,bs", [(1000, 400, 64), (100, 37, 16), (64, 0, 64), (10, 200, 32)])
def test_triton_planner_makes_the_reference_decisions(Nt, Ns, bs):
    import math

    from plan_checks import assert_valid_plan
    from liveditor.isa.plan import BlockGeometry, coarse_attention, make_plan
    from liveditor.kernels.planner import make_plan_triton

    cfg = ISAConfig(block_size=bs)
    q, k, _ = make_qkv(2, Nt, Ns, 3, 32, device=DEVICE)
    geom = BlockGeometry.build(Nt, Ns, bs, DEVICE)
    coarse = coarse_attention(q, k, k, geom, 1.0 / math.sqrt(32))
    ref = make_plan(coarse, geom, cfg)
    got = make_plan_triton(coarse.q_mean, coarse.k_mean, coarse.probs, geom, cfg)
    assert got.__dict__.get("_taylor_centroid_kv_blocks") is None  # derived on first read, below
    assert_valid_plan(got, q, k, cfg)
    for name in ("kept_context_blocks", "kv_blocks", "full_query_blocks", "taylor_query_blocks", "taylor_exact_kv_blocks", "taylor_centroid_kv_blocks"):
        assert getattr(got, name).dtype == torch.int32
        assert torch.equal(getattr(got, name), getattr(ref, name)), name


def test_triton_planner_breaks_ties_toward_lower_index():
    from liveditor.isa import plan_isa
    from liveditor.isa.plan import BlockGeometry, coarse_attention
    from liveditor.kernels.planner import make_plan_triton

    q = torch.ones(1, 768, 2, 8, device=DEVICE)
    cfg = ISAConfig(block_size=32, context_keep_ratio=0.25, full_query_ratio=0.5, exact_kv_ratio=0.25)
    geom = BlockGeometry.build(256, 512, 32, DEVICE)
    coarse = coarse_attention(q, q, q, geom, 8**-0.5)
    got = make_plan_triton(coarse.q_mean, coarse.k_mean, coarse.probs, geom, cfg)
    ref = plan_isa(q.cpu(), q.cpu(), 256, cfg)
    for name in ("kept_context_blocks", "full_query_blocks", "taylor_exact_kv_blocks"):
        assert torch.equal(getattr(got, name).cpu(), getattr(ref, name)), name


@pytest.mark.parametrize("method", ["sort", "bisect"])
def test_topk_select_matches_a_stable_sort_with_ties_and_signed_zeros(method):
    from liveditor.kernels.select import topk_select

    g = torch.Generator().manual_seed(0)
    for n in (1, 5, 37, 64, 100):
        for k in sorted({0, 1, n // 3, n - 1, n} - {-1}):
            x = torch.randint(-3, 4, (4, n), generator=g).float() * 0.5  # many ties
            x[0, : n // 2] = -0.0
            x[1] = torch.randn(n, generator=g)
            # The whole float range in one row (infinities, extremes, subnormals): the search bounds.
            extremes = torch.tensor([float("inf"), -float("inf"), 3e38, -3e38, 1e-45, -1e-45, 0.0, 1.0])
            x[3] = extremes[torch.randint(0, len(extremes), (n,), generator=g)]
            sel, rest, total = topk_select(x, k, selected=True, rest=True, top_sum=True, method=method)
            order = torch.sort(-x, dim=1, stable=True).indices  # descending, ties toward the lower index
            expected = order[:, :k].sort(dim=1).values
            assert torch.equal(sel.long(), expected), (n, k)
            assert torch.equal(rest.long(), order[:, k:].sort(dim=1).values), (n, k)
            # Sums of the finite rows (the extremes' sums overflow, in an order-dependent way).
            assert torch.allclose(total[:3], x[:3].gather(1, expected[:3]).sum(1)), (n, k)
            only_sum = topk_select(x, k, selected=False, top_sum=True, method=method)[2]
            assert torch.allclose(only_sum[:3], total[:3]), (n, k)


def test_bad_kernel_options_name_the_option():
    from liveditor.isa import ISAKernelOptions
    from liveditor.kernels.isa_fwd import DEFAULT_TUNING, ForwardTuning
    from liveditor.kernels.select import topk_select

    for bad in ("two", 0, 1.5, True):
        with pytest.raises(ValueError, match="ISAKernelOptions.dense_backward_heads"):
            ISAKernelOptions(dense_backward_heads=bad)
    assert ISAKernelOptions().dense_backward_heads == 2 and ISAKernelOptions(3).dense_backward_heads == 3
    with pytest.raises(ValueError, match="method must be one of"):
        topk_select(torch.rand(2, 8), 3, method="quick")
    for bad in ((4, 3, 0), (4, "3", 5), (0, 3, 5)):
        with pytest.raises(ValueError, match="ForwardTuning"):
            ForwardTuning(*bad)
    assert DEFAULT_TUNING == ForwardTuning(num_warps=4, num_stages=3, exact_stages=5) and DEFAULT_TUNING.label == "4,3,5"


@pytest.mark.parametrize("heads", [1, 4])
def test_dense_backward_heads_per_call_give_the_same_gradients(heads, monkeypatch):
    """The full path's dense backward a few heads per call (`ISAKernelOptions.dense_backward_heads`,
    memory against speed): the option reaches it, and any count, including more than there are
    heads, gives the same gradients."""
    from liveditor.isa import ISAKernelOptions
    from liveditor.kernels import isa_function

    calls = []
    real = isa_function._dense_backward_by_heads

    def spy(*args):  # the last argument: heads per call
        calls.append(args[-1])
        return real(*args)

    monkeypatch.setattr(isa_function, "_dense_backward_by_heads", spy)

    B, Nt, Ns, H, D, bs = 1, 100, 37, 3, 64, 32
    q0, k0, v0 = make_qkv(B, Nt, Ns, H, D, device=DEVICE, seed=3)
    cfg = ISAConfig(block_size=bs, context_keep_ratio=0.5, exact_kv_ratio=0.25)
    plan = isa_attention(q0, k0, v0, Nt, cfg, backend="torch", return_plan=True)[1]
    gate = torch.rand(B, Nt + Ns, 1, 1, device=DEVICE) * 0.25
    do = torch.randn_like(q0)
    grads = []
    for options in (ISAKernelOptions(), ISAKernelOptions(dense_backward_heads=heads)):
        q, k, v = (t.clone().requires_grad_() for t in (q0, k0, v0))
        out, _ = isa_attention_triton(q, k, v, Nt, cfg, gate=gate, plan=plan, full_path="sdpa", options=options)
        out.backward(do)
        grads.append((q.grad, k.grad, v.grad))
    assert calls == [2, heads]
    for name, a, b in zip(("dq", "dk", "dv"), *grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name


def _hopper_compile(*args):
    """`python *args` in a subprocess without TRITON_INTERPRET, for tests that compile kernels for
    sm_90 on a machine without a GPU (skipped when this Triton install has no ptxas)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this Triton install has no CUDA toolchain (ptxas)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)


_COMPILE_CENTROID_TABLES = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from liveditor.kernels.centroids import centroid_terms_kernel as fn

names = list(fn.arg_names)
ptr = {"K_MEAN": "*fp32", "V_MEAN": "*fp32", "LOG2_LEN": "*fp32", "KV_BLOCKS": "*i32", "EXACT": "*i32",
       "K_OUT": "*bf16", "V_OUT": "*bf16", "BIAS": "*fp32"}
const = {"NCP": 1024, "NEP": 64, "KP": 128, "CHUNK": 8, "HEAD_DIM": 128}
sig = {n: ptr.get(n, "constexpr" if n in const else "i32") for n in names}
src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(n),): v for n, v in const.items()})
triton.compile(src, target=GPUTarget("cuda", 90, 64), options=dict(num_warps=1))
print("compiled")
"""


def test_centroid_tables_kernel_compiles_for_hopper():
    """The interpreter runs code the compiler rejects (a variable of two types across an `if`
    once passed every CPU test and failed on the GPU): compile for sm_90, no GPU needed."""
    res = _hopper_compile("-c", _COMPILE_CENTROID_TABLES)
    assert res.returncode == 0 and "compiled" in res.stdout, res.stdout + res.stderr


_COMPILE_GLUON_TAYLOR = """
import re, sys
from liveditor.kernels import taylor_gluon
for head_dim in (64, 128):
    k = taylor_gluon.compile_for_hopper(head_dim)
    ptx = k.asm["ptx"]
    print(head_dim, k.metadata.shared, re.findall(r"\\.maxnreg (\\d+)", ptx), sorted(set(re.findall(r"setmaxnreg\\.(inc|dec)\\S*\\s+(\\d+)", ptx))))
"""


def test_gluon_taylor_kernel_compiles_for_hopper_with_two_programs_per_sm():
    """The Gluon Taylor kernel (no interpreter runs Gluon) compiled for sm_90 without a GPU: two
    programs must fit per H100 SM, in shared memory (233,472 bytes, 1,024 kept per program) and in
    registers (launched at 128 a thread; the producer warpgroup hands registers to the consumers)."""
    from liveditor.kernels import taylor_gluon

    assert taylor_gluon.AVAILABLE, "the installed Triton has no Gluon (triton.experimental.gluon)"
    res = _hopper_compile("-c", _COMPILE_GLUON_TAYLOR)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2, res.stdout
    for line in lines:
        head_dim, shared, rest = line.split(" ", 2)
        assert int(shared) <= 233_472 // 2 - 1_024, line
        assert "['128']" in rest and "('dec', '24')" in rest and "('inc', '232')" in rest, line


def test_gluon_taylor_launch_rejects_bad_tables():
    """The Gluon launch checks its tables before touching a GPU; off a GPU the Triton kernel runs."""
    from liveditor.kernels import taylor_gluon
    from liveditor.kernels.isa_fwd import CentroidTerms

    q = torch.zeros(1, 128, 2, 64, dtype=torch.bfloat16)
    blocks = torch.zeros(1, 2, 1, dtype=torch.int32)
    exact = torch.zeros(1, 2, 1, 1, dtype=torch.int32)

    def tables(nc, dtype=torch.bfloat16):
        return CentroidTerms(torch.zeros(1, 2, nc, 64, dtype=dtype), torch.zeros(1, 2, nc, 64, dtype=dtype),
                             torch.zeros(1, 2, 1, nc))

    with pytest.raises(ValueError, match="q's dtype"):
        taylor_gluon.launch_taylor(q, q, q, q, blocks, exact, tables(64, torch.float16), 128, 0.125)
    with pytest.raises(ValueError, match="multiple of 64"):
        taylor_gluon.launch_taylor(q, q, q, q, blocks, exact, tables(65), 128, 0.125)
    with pytest.raises(ValueError, match="at least one exact block"):
        taylor_gluon.launch_taylor(q, q, q, q, blocks, exact[..., :0], tables(0), 128, 0.125)
    assert not taylor_gluon.supported(q, q, q, 64)  # a CPU tensor


@pytest.mark.parametrize("kernel", ["taylor", "dq", "dkdv", "centroid"])
def test_kernel_loops_prefetch_their_tiles_when_compiled_for_hopper(kernel):
    """Compiled for sm_90 (no GPU needed, `scripts/isa_ir.py --check`), every tile load in a loop is
    a software-pipelined copy (a plain load there stalls every step; an int8 mask once did) and two
    programs fit per SM. For the forward's Taylor launch also: its block-index loads are pipelined
    and no loop waits for every copy in flight at each step (the exact-block loop did at a
    pipelining depth of 3, which left its K/V tiles one step ahead of use)."""
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "isa_ir.py"
    res = _hopper_compile(str(script), "--kernel", kernel, "--check")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "prefetched" in res.stdout and "2 programs per SM" in res.stdout, res.stdout
    if kernel == "taylor":
        assert "loop 2:" in res.stdout and "STALLS" not in res.stdout and "WAITS FOR LATER" not in res.stdout, res.stdout
