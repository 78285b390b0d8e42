# knowledge-circuits — the two commands a newcomer needs:
#   make reproduce   set up .venv and run every notebook on the organism (runs/, figures/)
#   make test        set up .venv and run the unit tests + nbval on the notebooks
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= kc-organism
TORCH_VERSION ?= 2.13.0
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
PAPERMILL_ARGS ?=

.PHONY: install reproduce test test-unit test-notebooks bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

reproduce: install
	@mkdir -p runs figures
	@if [ -z "$(NOTEBOOKS)" ]; then echo "no notebooks yet in notebooks/"; fi
	@set -e; for nb in $(NOTEBOOKS); do \
		name=$$(basename $$nb .ipynb); \
		echo "== $$name (model_name=$(MODEL))"; \
		$(PY) -m papermill $$nb runs/$$name.ipynb --cwd . -k python3 -p model_name $(MODEL) $(PAPERMILL_ARGS); \
	done

test: install
	$(PY) -m pytest tests $(if $(NOTEBOOKS),--nbval-lax $(NOTEBOOKS) --nbval-sanitize-with notebooks/sanitize.cfg --nbval-current-env)

test-unit: install
	$(PY) -m pytest tests

test-notebooks: install
	$(if $(NOTEBOOKS),$(PY) -m pytest --nbval-lax $(NOTEBOOKS) --nbval-sanitize-with notebooks/sanitize.cfg --nbval-current-env,@echo "no notebooks yet")

bench: install
	$(PY) benchmarks/attribution.py

clean:
	rm -rf runs .pytest_cache
