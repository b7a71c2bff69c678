"""Compiled Triton kernels vs the exact reference on a CUDA device (run by scripts/gpu_check.sh)."""

import pytest
import torch

from isa_cases import make_qkv, rel_l2
from liveditor.isa import ISAConfig, isa_attention

pytestmark = pytest.mark.gpu

TOL = {torch.bfloat16: 1e-2, torch.float16: 1e-2, torch.float32: 1e-5}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("full_path", ["triton", "sdpa"])
@pytest.mark.parametrize("Nt,Ns,B,growing", [(1000, 1000, 1, False), (3000, 1111, 2, True), (777, 63, 2, False), (4096, 0, 1, True)])
def test_kernel_matches_reference_cuda(dtype, D, full_path, Nt, Ns, B, growing):
    if full_path == "sdpa" and dtype == torch.float32:
        pytest.skip("the SDPA full path is for fp16/bf16 only")
    q, k, v = make_qkv(B, Nt, Ns, 4, D, dtype=dtype, device="cuda", growing_keys=growing)
    gate = torch.rand(B, Nt + Ns, 1, 1, device="cuda") * 0.25
    cfg = ISAConfig()
    ref, plan = isa_attention(q, k, v, Nt, cfg, gate=gate, backend="torch", return_plan=True)
    from liveditor.kernels.isa_function import isa_attention_triton

    out, _ = isa_attention_triton(q, k, v, Nt, cfg, gate=gate, plan=plan, full_path=full_path)
    assert torch.isfinite(out).all()
    assert rel_l2(out, ref) <= TOL[dtype]
