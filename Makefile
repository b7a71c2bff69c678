# The two quickstart commands (README): `make demo` and `make test`. Both set up .venv on first use,
# from the committed lock (requirements.lock); torch comes from pip's configured index like any pin.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
LOCK := requirements.lock

.PHONY: demo test gpu-check lock test-latest clean

$(STAMP): $(LOCK) pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/liveditor demo

test: $(STAMP)
	bash scripts/system_deps.sh
	$(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder --durations=25 tests

gpu-check:
	bash scripts/gpu_check.sh

# Refresh the lock after changing pyproject.toml's ranges or requirements-pins.in (needs the registry).
lock:
	test -x .venv-lock/bin/pip-compile || (python3 -m venv .venv-lock && .venv-lock/bin/pip install -q pip-tools)
	.venv-lock/bin/pip-compile --quiet --extra dev --no-emit-index-url --no-emit-find-links --strip-extras --allow-unsafe \
		--output-file $(LOCK) pyproject.toml requirements-pins.in

# Not CI: the newest versions pyproject's ranges admit, to learn what breaks next.
test-latest:
	rm -rf .venv-latest && python3 -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade -e '.[dev]' 'torch==2.14.1' 'torchvision==0.29.1'
	bash scripts/system_deps.sh
	.venv-latest/bin/python -m pytest -q tests -m "not lock_installed"

clean:
	rm -rf $(VENV) .venv-lock .venv-latest outputs .pytest_cache
