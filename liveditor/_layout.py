"""Keep the repo's top-level code folders from shadowing installed distributions.

The folders `kernels/`, `train/`, `eval/`, `data_pipeline/` and `configs/` are the subpackages
`liveditor.kernels`, ... (pyproject's package-dir). Whenever the repo root is on `sys.path` (Python
puts the current directory first for `python -m`, `python -c`, pytest and notebooks), a plain
`import kernels` would otherwise find this repo's folder instead of, say, Hugging Face's `kernels`
distribution that transformers probes for. Each folder's `__init__.py` calls `hand_over` first:
imported under its top-level name it either hands the import to the installed distribution of that
name or fails as if the folder were not there, and reports that it did so.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

# The repo's code folders and the names they are importable under.
MAPPED_FOLDERS = {name: f"liveditor.{name}" for name in ("kernels", "train", "eval", "data_pipeline", "configs")}


def hand_over(module_name: str, init_file: str) -> bool:
    """Called first by each mapped folder's `__init__.py` with its `__name__` and `__file__`.

    Returns False when the folder is being imported as its `liveditor.*` subpackage (the package body
    should run). Under its bare top-level name it returns True after replacing itself in `sys.modules`
    by the installed module of that name, found on `sys.path` without the repo root; when there is
    none it raises ModuleNotFoundError, exactly as if the folder did not exist.
    """
    if module_name not in MAPPED_FOLDERS:
        return False
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(init_file)))
    search_path = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != repo_root]
    spec = importlib.machinery.PathFinder.find_spec(module_name, search_path)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(
            f"No module named {module_name!r} (this repo's {module_name}/ folder is imported as "
            f"{MAPPED_FOLDERS[module_name]!r})",
            name=module_name,
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # the import statement returns whatever sys.modules holds
    spec.loader.exec_module(module)
    return True
