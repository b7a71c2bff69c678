"""EMA under ZeRO-3: each rank averages its own partition; checkpoints hold full tensors.

DeepSpeed does not run on this CPU suite, so two gloo processes lay their parameters out as ZeRO-3 does
(`train/ema.py` cites DeepSpeed's `Init._partition_param`): the flattened parameter zero-padded to a
multiple of the world size, rank r holding elements [r * P, (r + 1) * P) as `ds_tensor`, `param.data`
emptied. Against them: the same EMA on whole parameters in one process.
"""

from __future__ import annotations

import math
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from liveditor.train.ema import EMA, partition_of

DECAY = 0.9
STEPS = 3


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    # 7x5 = 35 and 3 elements: neither divides by 2, so the last partition carries padding.
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 1, bias=False))
    return model


SHAPES = {n: tuple(p.shape) for n, p in _model().named_parameters()}


def _step_values(step: int) -> dict:
    """What an optimizer step would leave in each parameter at `step` (deterministic)."""
    g = torch.Generator().manual_seed(100 + step)
    return {n: torch.randn(shape, generator=g) for n, shape in SHAPES.items()}


def _partition(model: torch.nn.Module, rank: int, world: int) -> None:
    for p in model.parameters():
        per = math.ceil(p.numel() / world)
        p.ds_numel, p.ds_shape = p.numel(), tuple(p.shape)
        p.ds_tensor = partition_of(p.data.clone(), per, rank)
        p.ds_tensor.ds_numel = per
        p.data = torch.empty(0)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = _model()
        _partition(model, rank, world)
        ema = EMA(model, DECAY)
        assert ema.partitioned and all(t.numel() == math.ceil(p.ds_numel / world)
                                       for t, p in zip(ema.shadow.values(), model.parameters()))
        for step in range(STEPS):
            for n, p in model.named_parameters():
                p.ds_tensor.copy_(partition_of(_step_values(step)[n], p.ds_tensor.numel(), rank))
            ema.update(model)
        state = ema.state_dict(model)  # a collective on every rank
        # Loading full tensors back cuts each rank's partition out of them again.
        again = EMA(model, DECAY)
        again.load_state_dict({"decay": DECAY, "updates": STEPS, "shadow": _broadcast(state["shadow"], model)}, model)
        same = all(torch.equal(again.shadow[n], ema.shadow[n]) for n in ema.shadow)
        # copy_to writes the averages into this rank's partitions; restore puts the values back.
        saved = ema.backup(model)
        ema.copy_to(model)
        copied = all(torch.equal(p.ds_tensor, ema.shadow[n]) for n, p in model.named_parameters())
        ema.restore(model, saved)
        restored = all(torch.equal(p.ds_tensor, saved[n]) for n, p in model.named_parameters())
        if rank == 0:
            torch.save({"state": state, "reloaded_same": same, "copied": copied, "restored": restored}, out)
        else:
            assert state["shadow"] == {} and same and copied and restored
    finally:
        dist.destroy_process_group()


def _broadcast(shadow: dict, model) -> dict:
    """Rank 0's full tensors on every rank (what DeepSpeed's load_checkpoint gives every rank)."""
    names = [n for n, _ in model.named_parameters()]
    box = [shadow if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return {n: box[0][n] for n in names}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_zero3_partitioned_ema_equals_the_whole_parameter_ema(tmp_path):
    out = tmp_path / "rank0.pt"
    mp.start_processes(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True, start_method="spawn")
    result = torch.load(out)
    assert result["reloaded_same"] and result["copied"] and result["restored"]
    state = result["state"]

    reference = _model()
    expected = EMA(reference, DECAY)
    for step in range(STEPS):
        with torch.no_grad():
            for n, p in reference.named_parameters():
                p.copy_(_step_values(step)[n])
        expected.update(reference)
    want = expected.state_dict()
    assert state["updates"] == STEPS and set(state["shadow"]) == set(want["shadow"])
    for n, t in want["shadow"].items():
        assert state["shadow"][n].shape == t.shape and torch.allclose(state["shadow"][n], t, atol=1e-7), n


def test_partition_layout_pads_the_last_rank():
    full = torch.arange(7.0).view(7, 1)
    assert torch.equal(partition_of(full, 4, 0), torch.tensor([0.0, 1, 2, 3]))
    assert torch.equal(partition_of(full, 4, 1), torch.tensor([4.0, 5, 6, 0]))  # zero padding at the end
    assert torch.equal(partition_of(full, 7, 0), full.view(-1))
