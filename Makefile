# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS     ?= test,ros,ray,deploy
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
OUT        ?= demo_out
PYTEST_ARGS ?=

.PHONY: install demo test test-fast bench clean

# torch is pinned in the same pip command as everything else: otherwise av2/kornia
# pull a CUDA build of torch. requirements/constraints.txt locks every other package.
$(STAMP): setup.cfg requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" -e ".[$(EXTRAS)]" -c requirements/constraints.txt
	$(PY) -c "import torch, spconv.pytorch, numba, mmengine, av2, nuscenes" \
	  || { echo "install check failed: see ../shared/ENVIRONMENT.md-style notes in README.md"; exit 1; }
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/p4d demo --out $(OUT)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: install
	$(PY) tools/benchmark.py voxelize

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .hypothesis
