# Two commands set everything up on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
RAMM := $(VENV)/bin/ramm
STAMP := $(VENV)/.installed
DATA ?= data/emojibench
RUN ?= runs/demo

.PHONY: demo demo-full demo-tiny demo-sft test bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(RAMM) demo --config configs/demo.json --data $(DATA) --run $(RUN)

demo-full: $(STAMP)
	$(RAMM) demo --config configs/demo-full.json --data $(DATA) --run runs/demo-full

demo-tiny: $(STAMP)
	$(RAMM) demo --config configs/demo-tiny.json --data $(DATA) --run runs/demo-tiny

demo-sft: $(STAMP)
	$(RAMM) demo-sft --config configs/demo-sft.json --data $(DATA) --base $(RUN) --run runs/demo-sft

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) runs
