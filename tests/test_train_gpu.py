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


def _module_and_batch(attention: str):
    cfg = DiTConfig(dim=128, ffn_dim=256, num_heads=2, num_layers=2, freq_dim=32, text_len=32, text_dim=32, attention=attention,
                    isa={"block_size": 64, "context_keep_ratio": 0.5, "full_query_ratio": 0.5, "exact_kv_ratio": 0.25})
    torch.manual_seed(0)
    module = EditorTrainingModule(cfg, TrainOptions(gradient_checkpointing=True))
    randomize_(module.model)
    g = torch.Generator().manual_seed(0)
    batch = {"target_latents": torch.randn(2, 16, 3, 16, 24, generator=g), "source_latents": torch.randn(2, 16, 3, 16, 24, generator=g),
             "text": torch.randn(2, 7, 32, generator=g), "position": {"epoch": 0, "worker": 0, "seq": 0}}
    return module.cuda(), batch


@pytest.mark.gpu
@pytest.mark.parametrize("attention", ["isa", "dense"])
def test_compiled_training_step_matches_eager_on_cuda(attention):
    """`model.dit.compile=true` in training (issue 28): the blocks' regions compiled by Inductor under
    gradient checkpointing and bf16 autocast give the eager step's loss and gradients to bf16 rounding."""
    results = []
    for compiled in (False, True):
        module, batch = _module_and_batch(attention)
        module.model.compile_blocks("inductor" if compiled else None)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = module.compute_loss(batch)
        loss.backward()
        results.append((loss.detach(), [p.grad.detach().clone() for p in module.model.parameters() if p.requires_grad]))
    (loss_e, grads_e), (loss_c, grads_c) = results
    assert torch.isfinite(loss_c) and abs(float(loss_c) - float(loss_e)) <= 1e-2 * abs(float(loss_e))
    num = sum(float((a - b).float().square().sum()) for a, b in zip(grads_c, grads_e))
    den = sum(float(b.float().square().sum()) for b in grads_e)
    assert (num / den) ** 0.5 < 3e-2


@pytest.mark.gpu
def test_liveditor_train_with_compiled_regions_on_cuda(tmp_path):
    """`liveditor-train model.dit.compile=true` on the GPU with ISA on the Triton kernels: three steps,
    a checkpoint at the last one, finite losses."""
    import json

    from liveditor.train.bench import write_synthetic_shards
    from liveditor.train.cli import main

    shards = write_synthetic_shards(tmp_path / "shards")
    run = tmp_path / "run"
    code = main(["experiment=tiny", "isa=paper", f"data.shards={shards}", f"run_dir={run}", "trainer.accelerator=gpu",
                 "trainer.precision=bf16-mixed", "trainer.max_steps=3", "model.dit.compile=true", "data.num_workers=0"])
    assert code == 0
    records = [json.loads(line) for line in (run / "samples.rank0.jsonl").read_text().splitlines()]
    steps = [r for r in records if "step" in r and "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3] and all(r["loss"] == r["loss"] for r in steps)
    assert (run / "checkpoints" / "last.ckpt").exists()
