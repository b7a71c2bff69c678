"""Exponential moving average of the trainable parameters: `ema = decay * ema + (1 - decay) * p`.

Shadows are float32 on the parameters' device. Under DeepSpeed ZeRO-3 a rank holds only a partition
of each parameter, which this class does not track: `liveditor-train` refuses EMA with ZeRO-3
(use a ZeRO-2 strategy for EMA runs; docs/training.md).
"""

from __future__ import annotations

import torch


class EMA:
    """Float32 shadows of `model`'s trainable parameters, by name."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        params = dict(model.named_parameters())
        names = list(self.shadow)
        shadows = [self.shadow[n] for n in names]
        current = [params[n].detach().to(shadows[0].device, torch.float32) for n in names]
        torch._foreach_lerp_(shadows, current, 1.0 - self.decay)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": {n: t.cpu() for n, t in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = sorted(set(self.shadow) - set(state["shadow"]))
        if missing:
            raise KeyError(f"the checkpoint's EMA lacks {len(missing)} trainable parameters, e.g. {missing[:3]}")
        for n, t in state["shadow"].items():
            if n in self.shadow:
                self.shadow[n].copy_(t)
        self.updates = int(state.get("updates", 0))

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Write the averages into `model`'s parameters (in their dtype)."""
        params = dict(model.named_parameters())
        for n, t in self.shadow.items():
            params[n].copy_(t.to(params[n].dtype))
