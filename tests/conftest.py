import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # Triton kernels run under the interpreter on CPU; must be set before any kernel is defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Libraries that attach a StreamHandler to their logger when first imported bind it to whatever
# sys.stderr is then. Imported inside a test that captures output (capsys), that is the test's capture
# stream, closed when the test ends: every later log record of theirs then prints "--- Logging error ---"
# into some later test's stderr (seen with Lightning's logger in a fresh clone's CI run). Importing them
# here binds their handlers to the session's stream.
import lightning.pytorch  # noqa: E402,F401
import torchmetrics  # noqa: E402,F401


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (run scripts/gpu_check.sh on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
