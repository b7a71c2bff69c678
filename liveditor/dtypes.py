"""The torch dtypes a config may name, in one table (`runtime.dtype`, `pairs.generate.dtype`,
`liveditor-export --dtype`), and their names back for saved configs and provenance."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> `"bfloat16"` (the name a config uses)."""
    return str(dtype).replace("torch.", "")
