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

# `make test` runs one worker per core (pytest-xdist, -n auto --dist loadfile). Each worker, and every
# process its tests start, then takes its share of the cores: two workers of two threads each on a 2-core
# machine spend their time in each other's way (measured: no faster than one process).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    _threads = str(max(1, len(os.sched_getaffinity(0)) // WORKERS))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = _threads
    torch.set_num_threads(int(_threads))

# Files that take most of the suite's time (measured on the 2-core development machine), handed out
# first so that the workers finish together: the learning benchmark alone is about a third.
SLOW_FILES_FIRST = ("test_learn.py", "test_demo.py", "test_train_loop.py", "test_curate_resume.py",
                    "test_curate_generate.py", "test_train_multinode.py", "test_train_precompute.py",
                    "test_eval_end_to_end.py")


def pytest_collection_modifyitems(config, items):
    if WORKERS > 1:  # a stable sort: the tests of a file keep their order
        rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
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
