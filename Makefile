# Two set-up commands for a fresh machine (see README):
#   make demo   - the main job on the embedded synthetic default
#   make test   - the test suite (what CI runs)
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
DEMO   ?= runs/demo

.PHONY: venv demo test test-slow bench clean

venv: $(VENV)/.installed

# torch/torchvision are pinned first so pip takes the local CPU/CUDA wheels
# instead of resolving a newer release from the index.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,jpeg]'
	touch $@

demo: venv
	$(BIN)/mammo-sim --preset quick --out $(DEMO)

test: venv
	$(BIN)/pytest -q

test-slow: venv
	$(BIN)/pytest -q -m slow

bench: venv
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs *.egg-info
