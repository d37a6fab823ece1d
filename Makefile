# Two commands: `make run` (the quick default benchmark, offline, CPU, -> results/report/
# report.pdf) and `make test`. Each creates .venv from the pinned requirements on first use and
# installs a TeX engine for the report where it can.
# The first interpreter on PATH in the pinned torch's range (3.11-3.13); `make PYTHON=...` overrides.
PYTHON ?= $(firstword $(foreach v,3.11 3.12 3.13,$(shell command -v python$(v) 2>/dev/null)))
VENV := .venv
PY := $(VENV)/bin/python
# The workflow's rules call `python -m prunebench`: make that the venv's python.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# What report/templates/report.tex.j2 needs (Debian names): booktabs, float, listings and
# latexmk beyond texlive-base.
TEX_PACKAGES := texlive-latex-recommended latexmk

.PHONY: run test lint docs tex slurm python mutation

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	@if [ -z "$(PYTHON)" ]; then \
		echo "make: no python3.11, python3.12 or python3.13 on PATH (the range torch 2.14.1" \
			"supports): install one, or give it: make PYTHON=/path/to/python3.x" >&2; exit 1; \
	fi
	@echo "make: creating $(VENV) with $(PYTHON) ($$($(PYTHON) --version 2>&1))"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -r requirements-dev.txt
	$(PY) -m pip install --no-deps -e .
	touch $@

# Which interpreter the environment runs (printed by run and test).
python: $(VENV)/.installed
	@echo "make: using $(PY) ($$($(PY) --version 2>&1))"

# Idempotent: nothing to do when latexmk and the LaTeX packages are there; installs them as
# root with apt-get (Debian/Ubuntu); elsewhere says how, and the report rule fails naming it.
tex:
	@if command -v latexmk >/dev/null 2>&1 && kpsewhich booktabs.sty >/dev/null 2>&1; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "make: installing $(TEX_PACKAGES) for the report"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $(TEX_PACKAGES); \
	else \
		echo "make: no latexmk/LaTeX found and no root apt-get to install it: install TeX Live" \
			"with latexmk (Debian/Ubuntu: $(TEX_PACKAGES)), or the report step will fail" >&2; \
	fi

# The single-node SLURM of tests/test_slurm.py: Debian's slurm-wlm and munge, installed as root
# with apt-get when missing; elsewhere its cluster tests skip, saying so.
SLURM_PACKAGES := slurm-wlm munge
slurm:
	@if command -v slurmctld >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "make: installing $(SLURM_PACKAGES) for tests/test_slurm.py"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq --no-install-recommends $(SLURM_PACKAGES) >/dev/null 2>&1 \
		|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
			$(SLURM_PACKAGES) >/dev/null; } \
		|| echo "make: could not install $(SLURM_PACKAGES): tests/test_slurm.py skips its" \
			"cluster tests" >&2; \
	else \
		echo "make: no SLURM and no root apt-get to install it ($(SLURM_PACKAGES)):" \
			"tests/test_slurm.py skips its cluster tests" >&2; \
	fi

run: python tex
	$(VENV)/bin/snakemake

# Every tier (fast, slow, SLURM): what CI runs. The fast tier alone: .venv/bin/python -m pytest
test: python tex slurm
	$(PY) -m pytest -m ""

# The documentation site, docs/ -> site/ (then open site/index.html; `mkdocs serve` serves it
# while you edit). --strict: a broken link, missing page or unresolved API name fails the build.
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/snakefmt --check Snakefile rules/
	$(VENV)/bin/snakemake --lint

# Mutation testing of the code that decides a published number (mutmut; [tool.mutmut] in
# pyproject.toml): one module after another into mutants/ (each entry is a prefix of mutant
# names: run.py's measure() only, where the run extracts and checks its budget), then the score
# per module. Hours on 2 cores, so not part of `make test`;
# `make mutation MUTATION_MODULES=prunebench.methods.gumbel.` runs one. Results and the
# survivors' explanations: docs/development.md (Mutation testing).
MUTATION_MODULES ?= prunebench.training.masking. prunebench.training.run.x_measure_ \
	prunebench.methods.gumbel. \
	prunebench.methods.reparam. prunebench.baselines.snip. prunebench.baselines.edgepopup. \
	prunebench.baselines.magnitude. prunebench.baselines.random. \
	prunebench.baselines.supermask. prunebench.reporting.statistics.
mutation: $(VENV)/.installed
	@for module in $(MUTATION_MODULES); do \
		echo "make: mutation testing $$module"; \
		OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run "$$module*" || exit 1; \
	done
	@$(VENV)/bin/mutmut results --all true | awk -F': ' '{ m = $$1; sub(/^ +/, "", m); \
		sub(/[.]x[^.]*$$/, "", m); n[m]++; s[m, $$2]++ } END { for (m in n) \
		printf "%s: %d mutants, %d killed, %d survived, %d timeout, %d no tests, %d not checked\n", \
		m, n[m], s[m, "killed"], s[m, "survived"], s[m, "timeout"], s[m, "no tests"], \
		s[m, "not checked"] }' | sort
