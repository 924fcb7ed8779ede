# Two commands do all set-up on a fresh machine with Python 3.11 and the package registries:
#   make run    create .venv, install the pinned requirements, run the DVC pipeline
#   make test   install the same if needed, run pytest
# Others: make ui (MLflow UI on 127.0.0.1:5000), make plots (offline plots page), make bench,
# make zoo (every other model, one DVC experiment each), make cv (5-fold cross-validation by subject),
#   make seeds (the default models from 5 training seeds), make clean.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Keep numba's JIT cache (librosa) between processes and runs: the first feature call in a fresh
# environment otherwise spends ~20 s compiling.
export NUMBA_CACHE_DIR := $(CURDIR)/.numba_cache
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PYTHONDONTWRITEBYTECODE := 1
# dvc.yaml's commands say `python -m stages.<name>`: run them with the project's environment
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install run test ui plots bench zoo cv seeds clean

$(STAMP): requirements.txt requirements.lock personality/facemodel.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -c requirements.lock
	@# torchvision was pinned until 2026-12-06; left in an older .venv it wants torch >= 2.14
	@# and `pip check` would fail: it goes (the CUDA libraries it came with are unused, harmless)
	$(BIN)/python -m pip uninstall --yes --quiet torchvision 2>/dev/null || true
	$(BIN)/python -m pip check
	$(BIN)/python -m personality.facemodel --install
	$(BIN)/python -m personality.warmup
	touch $(STAMP)

install: $(STAMP)

# dvc repro, with the one-core trainings side by side (scripts/repro.py; --jobs 1: plain dvc repro)
run: $(STAMP)
	$(BIN)/python scripts/repro.py
	$(BIN)/dvc metrics show metrics/summary.json

# each test file runs whole on one of TEST_WORKERS processes (pytest-xdist --dist loadfile: a
# file's module fixtures are built once), in collection order, the slowest files first
# (tests/conftest.py SLOW_FILES); on 2 cores 2 workers took 11.3-14.6 min where 1 took 20.6
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15 --timeout=900 -n $(TEST_WORKERS) --dist loadfile \
		--no-loadscope-reorder tests

# opens on the experiment's training runs (MLflow 3 would show its GenAI view): follow the link
ui: $(STAMP)
	@$(BIN)/python -c "from personality.common import mlflow_ui_url; \
	print('MLflow training runs (one parent run per pipeline run):', mlflow_ui_url())"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

# the plots of `dvc plots show` plus test CCC per model with intervals, as one page that needs no
# network (dvc plots show's own index.html loads Vega from a CDN): dvc_plots/offline/index.html
plots: $(STAMP)
	$(BIN)/python scripts/plots.py --png

# every bench/*.py (after `make run`: most read data/); bench/pipeline.py re-runs the whole pipeline
# in a fresh clone (~10-15 min), bench/cue_check_power.py simulates the explain check (~30 min)
bench: $(STAMP)
	for f in bench/*.py; do $(BIN)/python $$f || exit 1; done

# every registered model outside train.models, one queued DVC experiment each (~15 min on 2 cores)
zoo: run
	$(BIN)/python scripts/zoo.py --jobs 2

# cross-validation by subject: one queued DVC experiment per fold (ingest.fold=k), table of
# mean and sd of test CCC per model and of all folds' test clips pooled, with intervals
# (bench/results/cv.json, cv.png; 25 min on 2 cores)
cv: run
	$(BIN)/python scripts/cv.py --folds 5 --jobs 2

# the default models trained from 5 other seeds on the default split: one queued DVC experiment
# each (train.seed, retrain.seed and the trees' seed = k), mean and sd of test CCC per model (~50 min)
seeds: run
	$(BIN)/python scripts/cv.py --seeds 5 --jobs 2

# every output under data/ of dvc.yaml (tests/test_dvc_deps.py checks the list); metrics/ (git),
# mlflow.db and DVC's cache stay, so `dvc checkout` brings the outputs back from the cache
clean:
	rm -rf data/manifest.parquet data/clips.parquet data/user_study.parquet \
	       data/synthetic_cues.parquet data/synthetic_tracks.parquet data/source_aus \
	       data/inputs.json data/inputs_aus.json data/inputs_deploy.json data/inputs_train \
	       data/videos data/frames data/faces data/aus data/audio data/augmented \
	       data/functionals data/models data/predictions data/retrained data/deploy \
	       data/tracked .numba_cache
