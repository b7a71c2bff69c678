# The two quickstart commands (README): `make demo` and `make test`. Both set up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/liveditor demo

test: $(STAMP)
	$(PY) -m pytest -q tests

gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV) outputs .pytest_cache
