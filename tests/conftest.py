import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # Triton kernels run under the interpreter on CPU; must be set before any kernel is defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Libraries that attach a StreamHandler to their logger when first imported (Lightning, torchmetrics)
# bind it to whatever sys.stderr is then: inside a test that captures output (capsys), the test's
# capture stream, closed when the test ends. Importing them here binds their handlers to the session's
# stream. (The root logger's handlers are restored after every test: `_root_logging_restored`.)
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


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """A `@hydra.main` app run in-process (liveditor-curate, liveditor-eval) configures logging for its
    job: it puts its own StreamHandler on the root logger, bound to the test's capture stream, which is
    closed when the test ends; a later test's log record then prints "--- Logging error ---" into that
    test's stderr. Each test ends with the root logger's handlers (other than pytest's) and level as
    they were before it."""
    import logging

    from _pytest.logging import LogCaptureHandler

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers[:]:
        if h not in handlers and not isinstance(h, LogCaptureHandler):
            root.removeHandler(h)
            h.close()
    for h in handlers:
        if h not in root.handlers and not isinstance(h, LogCaptureHandler):
            root.addHandler(h)
    root.setLevel(level)
