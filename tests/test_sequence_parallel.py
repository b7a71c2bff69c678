"""Ulysses sequence parallelism of the editor DiT on two CPU processes (gloo): the prediction and the
parameter gradients equal the single-process model's, with ISA and dense attention, at token counts
that do not divide by the group size."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, attention: str, results):
    import torch.distributed as dist

    from liveditor.models import DiTConfig, EditorDiT
    from liveditor.models.sequence_parallel import SequenceParallel
    from liveditor.pipeline.tiny import randomize_

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        cfg = DiTConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, freq_dim=32, text_len=16, text_dim=32, attention=attention,
                        isa={"block_size": 16, "context_keep_ratio": 0.5, "full_query_ratio": 0.5, "exact_kv_ratio": 0.25},
                        isa_backend="torch")
        model = randomize_(EditorDiT(cfg), seed=1)
        model.gradient_checkpointing = True
        g = torch.Generator().manual_seed(2)
        latents = torch.randn(2, 16, 3, 6, 10, generator=g)  # 45 target + 45 source tokens: 90, odd shards
        source = torch.randn(2, 16, 3, 6, 10, generator=g)
        text = torch.randn(2, 7, 32, generator=g)
        t = torch.tensor([300.0, 800.0])

        def loss_and_grads():
            model.zero_grad(set_to_none=True)
            out = model(latents, t, text, source)
            loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()
            loss.backward()
            return out.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

        ref_out, ref_grads = loss_and_grads()
        sp = SequenceParallel()
        model.enable_sequence_parallel(sp)
        out, _ = loss_and_grads()
        sp.reduce_gradients(model)
        grads = {n: p.grad.detach() for n, p in model.named_parameters() if p.grad is not None}
        worst_grad = max(((grads[n] - ref_grads[n]).abs().max() / ref_grads[n].abs().max().clamp_min(1e-12)).item() for n in ref_grads)
        results[rank] = {"out": (out - ref_out).abs().max().item(), "scale": ref_out.abs().max().item(), "grad": worst_grad,
                         "same_keys": sorted(grads) == sorted(ref_grads)}
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("attention", ["isa", "dense"])
def test_two_rank_sequence_parallel_equals_one_process(attention):
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(2, _free_port(), attention, results), nprocs=2, join=True)
    for rank in (0, 1):
        r = results[rank]
        assert r["same_keys"]
        assert r["out"] <= 1e-5 * r["scale"], r
        assert r["grad"] <= 1e-4, r
