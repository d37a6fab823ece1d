# Two commands: `make run` (the quick default benchmark, offline, CPU, -> results/report/
# report.pdf) and `make test`. Each creates .venv from the pinned requirements on first use and
# installs a TeX engine for the report where it can.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# The workflow's rules call `python -m prunebench`: make that the venv's python.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# What report/templates/report.tex.j2 needs (Debian names): booktabs, float, listings and
# latexmk beyond texlive-base.
TEX_PACKAGES := texlive-latex-recommended latexmk

.PHONY: run test lint tex

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

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

run: $(VENV)/.installed tex
	$(VENV)/bin/snakemake

test: $(VENV)/.installed tex
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/snakemake --lint
