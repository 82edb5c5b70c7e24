# Two entry points: `make demo` (the main job) and `make test` (the test suite).
# Each installs what it needs on first use into the current Python.
PYTHON ?= python3
# One install stamp per interpreter (a hash of its sys.prefix): a new virtual environment installs afresh.
ifndef STAMP
STAMP := .make/installed-$(shell $(PYTHON) -c "import hashlib, sys; print(hashlib.sha1(sys.prefix.encode()).hexdigest()[:12])")
endif

.PHONY: install demo test test-slow bench gpu-check

$(STAMP): pyproject.toml
	$(PYTHON) -m pip install --quiet torch==2.13.0 || $(PYTHON) -m pip install --quiet "torch>=2.2"
	$(PYTHON) -m pip install --quiet -e ".[test]"
	@mkdir -p $(dir $(STAMP)) && touch $(STAMP)

install: $(STAMP)

# Benchmarks compare against zuko, nflows and normflows and run Gymnasium-Robotics and MiniGrid: installed only here.
bench: $(STAMP)
	$(PYTHON) -m pip install --quiet -e ".[bench]"
	@echo "benchmarks: python scripts/bench_<topic>.py --help"

demo: $(STAMP)
	$(PYTHON) scripts/demo.py $(DEMO_ARGS)

# Lint (ruff), type check (mypy on flowrl/ and envs/, settings in pyproject.toml), then the suite with its doctests.
test: $(STAMP)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy
	$(PYTHON) -m pytest -n 2 --dist loadgroup

test-slow: $(STAMP)
	$(PYTHON) -m pytest -m slow

# The prepared GPU check (scripts/gpu_check.py): device tests, every flow on the GPU, flows vs zuko
# (if installed), SAC/PPO presets cuda vs cpu; ~5 min on one H200, no network; non-zero on failure.
# Runs in the current Python as it is (a GPU machine keeps its own CUDA torch; nothing is installed).
gpu-check:
	$(PYTHON) scripts/gpu_check.py $(GPU_CHECK_ARGS)
