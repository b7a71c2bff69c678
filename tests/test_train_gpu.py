"""A training step on CUDA: the tiny model under bf16 autocast with float32 parameters (Lightning's
bf16-mixed), gradient checkpointing, ISA through the Triton kernels and dense attention."""

from __future__ import annotations

import pytest
import torch

from liveditor.models import DiTConfig
from liveditor.pipeline.tiny import randomize_
from liveditor.train.module import EditorTrainingModule, TrainOptions


@pytest.mark.gpu
@pytest.mark.parametrize("attention", ["isa", "dense"])
def test_training_step_on_cuda(attention):
    cfg = DiTConfig(dim=128, ffn_dim=256, num_heads=2, num_layers=2, freq_dim=32, text_len=32, text_dim=32, attention=attention,
                    isa={"block_size": 64, "context_keep_ratio": 0.5, "full_query_ratio": 0.5, "exact_kv_ratio": 0.25})
    module = EditorTrainingModule(cfg, TrainOptions(gradient_checkpointing=True))
    randomize_(module.model)  # Wan's init zeroes the head, which would leave every other gradient zero
    for block in module.model.blocks:  # the ISA gate starts closed, as from a plain Wan checkpoint
        torch.nn.init.zeros_(block.self_attn.alpha_1.weight)
    module = module.cuda()
    g = torch.Generator().manual_seed(0)
    batch = {"target_latents": torch.randn(2, 16, 3, 16, 24, generator=g), "source_latents": torch.randn(2, 16, 3, 16, 24, generator=g),
             "text": torch.randn(2, 7, 32, generator=g), "position": {"epoch": 0, "worker": 0, "seq": 0}}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = module.compute_loss(batch)
    loss.backward()
    grads = [p.grad for p in module.model.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
    gate = module.model.blocks[0].self_attn.alpha_1.weight.grad
    if attention == "isa":
        assert gate.abs().sum() > 0  # the ISA gate learns from zero
