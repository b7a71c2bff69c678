"""The editor model: Wan DiT in context over `[target, source]` tokens, with ISA or dense attention.

    cfg = DiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, attention="isa")
    model, report = build_editor(cfg, weights="Wan2.1-T2V-1.3B/", device="cuda", dtype=torch.bfloat16)
    velocity = model(noisy_latents, timestep, text_states, source_latents)
"""

from liveditor.models.config import ATTENTION_BACKENDS, DiTConfig
from liveditor.models.dit import EditorDiT
from liveditor.models.loading import (
    CheckpointError,
    LoadReport,
    build_editor,
    detect_layout,
    diffusers_to_wan,
    load_editor_weights,
    read_state_dict,
    save_editor_weights,
    wan_to_diffusers,
)

__all__ = [
    "ATTENTION_BACKENDS",
    "DiTConfig",
    "EditorDiT",
    "CheckpointError",
    "LoadReport",
    "build_editor",
    "detect_layout",
    "diffusers_to_wan",
    "load_editor_weights",
    "read_state_dict",
    "save_editor_weights",
    "wan_to_diffusers",
]
