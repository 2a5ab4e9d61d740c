# The commands a user runs. Everything installs itself into .venv (no root needed).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA   ?= data/demo
MODELS ?= saved_models
VERSION ?= 1
REDIS_PORT ?= 6390
REDIS_URL ?= redis://127.0.0.1:$(REDIS_PORT)/0
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test test-fast lint clean bench data train export serve deploy \
        redis-start redis-stop backfill stream produce rollout

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 (apt-get install python3.11 python3.11-venv)"; exit 1; }
	$(PYTHON) -m venv $(VENV) || { echo "error: could not create a virtualenv; on Debian/Ubuntu: apt-get install python3.11-venv"; exit 1; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(PY) -m devkit.demo

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) -m bench

data: setup
	$(PY) -m tf_models.data.synthetic --out $(DATA)

train: setup
	$(PY) -m tf_models.train --model dien --data $(DATA) --out runs/dien
	$(PY) -m tf_models.train --model mimn --data $(DATA) --out runs/mimn
	$(PY) -m tf_models.train --model mlp  --data $(DATA) --out runs/mlp

export: setup
	$(PY) -m tf_models.export --run runs/dien --out $(MODELS) --version $(VERSION)
	$(PY) -m tf_models.export --run runs/mimn --out $(MODELS) --version $(VERSION)
	$(PY) -m tf_models.export --run runs/mlp  --out $(MODELS) --version $(VERSION)

serve: setup
	$(PY) -m model_server.launch --model_config_file=serving_configs/models.config \
	    --batching_parameters_file=serving_configs/batching.config \
	    --monitoring_config_file=serving_configs/monitoring.config

deploy: setup
	$(PY) -m model_server.deploy

redis-start: setup
	$(PY) -m devkit.redis_server start --port $(REDIS_PORT) --dir .redis

redis-stop: setup
	$(PY) -m devkit.redis_server stop --port $(REDIS_PORT) --dir .redis

backfill: setup
	$(PY) -m beam_jobs.backfill --events $(DATA)/events.jsonl --model dien --version $(VERSION) \
	    --saved_models $(MODELS) --redis_url $(REDIS_URL)

stream: setup
	$(PY) -m beam_jobs.stream --model dien --saved_models $(MODELS) --redis_url $(REDIS_URL)

produce: setup
	$(PY) -m beam_jobs.produce --events $(DATA)/events.jsonl --rate 100 --redis_url $(REDIS_URL)

rollout: setup
	$(PY) -m beam_jobs.rollout --model dien --events $(DATA)/events.jsonl \
	    --saved_models $(MODELS) --redis_url $(REDIS_URL)

clean:
	rm -rf $(VENV) .redis .demo runs data dead_letter bench_results/tmp .pytest_cache .hypothesis build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
