# Every target builds the project's virtualenv on first use, so a fresh machine needs only python3.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DATA_DIR ?= data/synthetic
HARD_DATA_DIR ?= data/synthetic_hard
BUNDLE_DIR ?= data/tiny-wan
# Sweeps: `make ablation-table2 PROFILE=smoke`, `make sweep SWEEP=sweeps/bbs_p.yaml WORKERS=2`,
# STORAGE=postgresql://... to share one Optuna study between machines.
PROFILE ?= default
WORKERS ?= 1
SWEEP ?= sweeps/table2.yaml
STORAGE ?=
SWEEP_ARGS = --profile $(PROFILE) --workers $(WORKERS) $(if $(STORAGE),--storage $(STORAGE),) $(ARGS)

.DEFAULT_GOAL := help
.PHONY: help venv data tiny-wan train ablation-table2 ablation-table3 decoder sweep mlflow-ui optuna-dashboard test test-slow bench clean protocol-ytvos protocol-mevis bench-dataloading

help:  ## list targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

# torch first and alone (docs/design.md §7): a local CPU wheel here, the normal release elsewhere.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

venv: $(STAMP)  ## create the virtualenv and install rvosflow into it

data: $(STAMP)  ## generate both synthetic tiers (default, hard) in all four real formats (cached)
	$(PY) -m rvosflow.data.synthetic --out $(DATA_DIR)
	$(PY) -m rvosflow.data.synthetic --tier hard --out $(HARD_DATA_DIR)

tiny-wan: data  ## pretrain the tiny Wan bundle on the synthetic train split (cached; FORCE=1 retrains)
	$(PY) -m rvosflow.pretrain --data $(DATA_DIR) --out $(BUNDLE_DIR) $(if $(FORCE),--force,)

train: data  ## train and score one configuration (the paper's final model) on the embedded default
	$(PY) run.py $(ARGS)

ablation-table2: tiny-wan  ## every row of Table 2 x seeds as one Optuna study -> results/table2.{md,csv,tex} (PROFILE=smoke: minutes)
	$(PY) -m rvosflow.sweep sweeps/table2.yaml $(SWEEP_ARGS)

ablation-table3: tiny-wan  ## Table 3: frozen vs tuned VAE decoder (Recon, Perf) -> results/table3-$(PROFILE).{md,csv,tex} (PROFILE=smoke: ~2 min)
	$(PY) -m experiments.table3 --profile $(PROFILE) $(ARGS)

decoder: tiny-wan  ## tune the VAE decoder (1-channel logit head, focal + dice) -> OUT=outputs/decoder/tiny (ARGS: overrides)
	$(PY) -m rvosflow.decoder --out $(or $(OUT),outputs/decoder/tiny) $(ARGS)

sweep: tiny-wan  ## run a sweep file: SWEEP=sweeps/bbs_p.yaml PROFILE=default WORKERS=1 STORAGE=<db url>
	$(PY) -m rvosflow.sweep $(SWEEP) $(SWEEP_ARGS)

mlflow-ui: $(STAMP)  ## browse runs, sweeps (parent/child runs), metrics and overlays at http://127.0.0.1:5000
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1

optuna-dashboard: $(STAMP)  ## browse the sweeps' Optuna studies (trials, slice/importance plots) at http://127.0.0.1:8080
	$(VENV)/bin/optuna-dashboard $(or $(STORAGE),sqlite:///$(CURDIR)/sweeps.db) --host 127.0.0.1 --port 8080

protocol-ytvos: data  ## RefCOCO pretrain -> Ref-YTVOS finetune -> Ref-DAVIS zero-shot (synthetic; REAL=1 for Table 4)
	$(PY) -m experiments.ytvos_protocol $(if $(REAL),--real,) $(ARGS)

protocol-mevis: data  ## MeViS from scratch -> valid_u scored -> valid zipped (synthetic; REAL=1 for Table 4)
	$(PY) -m experiments.mevis_protocol $(if $(REAL),--real,) $(ARGS)

bench-dataloading: $(STAMP)  ## clips/s per DataLoader worker, 17x480x832 clips from 720p JPEG (MeViS layout)
	$(PY) scripts/bench_dataloading.py --compare-torch $(ARGS)

test: $(STAMP)  ## fast test suite (with the import contracts: layers, no cycles; tests/test_architecture.py)
	$(PY) -m pytest -q

test-slow: $(STAMP)  ## long tests only (end-to-end training and pretraining)
	$(PY) -m pytest -q -m slow

clean:  ## remove generated data, runs and the virtualenv (keeps the shipped tiny bundle)
	rm -rf $(VENV) $(DATA_DIR) $(HARD_DATA_DIR) outputs multirun results mlflow.db mlartifacts sweeps.db
