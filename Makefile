# specbridge — the two commands a newcomer needs:
#   make demo   install into .venv, then run the whole pipeline on the embedded default
#   make test   install into .venv (with the dev extra), then run the test suite
#
# Other targets: make install, make lint, make dryrun, make bench (benchmarks), make clean.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CORES  ?= 2
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo test lint dryrun clean bench-env bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch==2.13.0 is pinned: on the reference machine pip takes the CPU build from disk
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: install
	$(BIN)/snakemake --cores $(CORES) --printshellcmds
	$(BIN)/snakemake --report results/report/snakemake-report.html
	@echo
	@echo "catalogue:  results/vac/specbridge-vac-v1.fits (+ .h5; DESI layout in results/vac/v1/: healpix/SURVEY/PROGRAM/HPIXGROUP/HEALPIX/, per SURVEY-PROGRAM)"
	@echo "report:     results/report/index.html  (Snakemake report: results/report/snakemake-report.html)"
	@echo "evaluation: results/evaluation/metrics.md"

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/snakemake --lint

# The peers the benchmarks compare against (not dependencies of specbridge): spectres (with
# spectres_numba) and desispec's resample_flux (desispec without its heavy dependencies).
bench-env: install
	$(BIN)/python -m pip install --quiet spectres==2.2.2 desiutil==4.0.1
	$(BIN)/python -m pip install --quiet --no-deps desispec==0.70.0

bench: bench-env
	$(BIN)/python benchmarks/preprocess_kernels.py
	$(BIN)/python benchmarks/manifest_scan.py
	$(BIN)/python benchmarks/emulator_report.py

dryrun: install
	$(BIN)/snakemake -n

clean:
	rm -rf results .snakemake
