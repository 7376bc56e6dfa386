# mrcnn-bench: `make demo` sets everything up and runs the default benchmark; `make test` runs the tests.
# Both work from a clean clone with no venv: the first target that needs it creates .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BENCH := $(VENV)/bin/mrcnn-bench
# Sources whose change means the package (and its C++/CUDA extension) must be reinstalled.
BUILD_INPUTS := pyproject.toml setup.py $(shell find reference_impl/csrc -type f 2>/dev/null)

.PHONY: setup detectron2 mmdet demo baseline lint test test-long test-fast fuzz bench-ops torch-floor clean gate gate-baseline browser site

setup: $(VENV)/.installed

$(VENV)/.installed: $(BUILD_INPUTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "setuptools>=77" wheel ninja "torch==2.14.1" "torchvision==0.29.1"
	# setup.py builds the extension against the torch just installed, hence no build isolation.
	CUDA_HOME=$${CUDA_HOME:-$$(test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda)} \
	  MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install -q --no-build-isolation -e ".[test]"
	# Holistic Trace Analysis (the trace's GPU idle time) without its notebook dependencies (jupyterlab)
	$(PY) -m pip install -q "plotly>=5.11" "pydot>=1.3" && $(PY) -m pip install -q --no-deps "HolisticTraceAnalysis==0.5.0"
	$(PY) -c "import mrcnn_bench.harness.cli"
	touch $@

# detectron2 v0.6 into the same venv (no pins clash): pb1-detectron2 from PyPI, patched to install
# without its C++ sources (not needed for Mask R-CNN R-50-FPN). See scripts/install_detectron2.py.
detectron2: $(VENV)/.detectron2

$(VENV)/.detectron2: $(VENV)/.installed scripts/install_detectron2.py scripts/pypi_sdist.py
	$(PY) scripts/install_detectron2.py
	touch $@

# mmdetection 3.3.0 with mmcv 2.1.0 built from its PyPI sdist (ops compiled against this torch) into the
# same venv. The built wheel is cached (~/.cache/mrcnn-bench/wheels, or $$MRCNN_BENCH_CACHE): only the first
# install compiles (4 to 7 min on 2 cores for the CPU ops; MMCV_CUDA=on adds the CUDA ops). See
# scripts/install_mmdet.py.
mmdet: $(VENV)/.mmdet

$(VENV)/.mmdet: $(VENV)/.installed scripts/install_mmdet.py scripts/pypi_sdist.py
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) scripts/install_mmdet.py --cuda $(or $(MMCV_CUDA),auto)
	touch $@

# The default benchmark: every implementation on the small CPU scenario, synthetic data.
demo: setup detectron2 mmdet
	$(BENCH) run --impl all --config cpu_small --device cpu --run-id demo --force
	$(BENCH) report results/runs/demo

# Re-record the committed CPU baselines and the tables generated from them (on a quiet machine): cpu_small
# and cpu_canonical, three interleaved rounds, each round every implementation as shipped and each at its
# best (--settings both); results/README.md and the tables of README.md and docs/results.md.
baseline: setup detectron2 mmdet
	for scenario in cpu_small cpu_canonical; do \
	  $(BENCH) run --impl all --config $$scenario --device cpu --settings both --repeats 3 --out results/baselines \
	    --run-id $$scenario --force || exit 1; \
	  rm -f results/baselines/$$scenario/*/*/launch.json; \
	  for page in README.md docs/results.md; do \
	    $(BENCH) report results/baselines/$$scenario --into $$page || exit 1; \
	  done; \
	done
	$(BENCH) report results/baselines/cpu_small --plots results/baselines/cpu_small/plots --out results/README.md \
	  --title "Results: the CPU scenario (cpu_small), committed baseline, three rounds of both modes"

# ruff (pyproject.toml's [tool.ruff]: line length 110): the lint rules and the formatter's layout
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# CI's command (.ci/run): every test but those marked long (make test-long), the slowest 25 named at the
# end, then the gate.
test: setup lint detectron2 mmdet browser
	$(PY) -m pytest -q -m "not long" --durations=25 tests
	$(MAKE) gate

# The tests marked long, a minute or more each, outside CI's 40 minutes (1875 s here on 2026-12-07): the
# reference learning from scratch in fp32 and bf16, every implementation's trace, phases and loaders,
# detectron2's and mmdet's two-process runs, both modes in every round, and the device check's rehearsal
# (run it before a GPU session too).
test-long: setup detectron2 mmdet
	$(PY) -m pytest -q -m long --durations=0 tests

# The throughput regression gate on the CPU (docs/reliability.md, "The regression gate"): the reference of GATE_BASE
# against this tree's, GATE_ROUNDS runs a side interleaved on this machine at cpu_small's size over a
# 10-iteration window (scripts/gate.py); a failed run fails the gate. GATE_BASE is the last commit whose
# gate passed CI; where a shallow clone lacks it, the gate falls back, loudly, to the committed rounds.
GATE_SCENARIO = --config cpu_small --set benchmark.iters=15 --set benchmark.warmup=5 --set benchmark.window_end=15
GATE_BASE ?= 24e7923ecf73a4e6e845beabaa2fe3d837275b1a
GATE_ROUNDS ?= 3
GATE_BASELINE ?= results/baselines/gate-cpu
GATE_RUN ?= results/runs/gate
gate: setup
	$(PY) scripts/gate.py --base $(GATE_BASE) --rounds $(GATE_ROUNDS) --out $(GATE_RUN) --baseline $(GATE_BASELINE) \
	  -- $(GATE_SCENARIO)

gate-baseline: setup
	rm -rf $(GATE_BASELINE)
	$(BENCH) run $(GATE_SCENARIO) --impl reference,torchvision --repeats 5 --out $(dir $(GATE_BASELINE)) --run-id $(notdir $(GATE_BASELINE))
	rm -f $(GATE_BASELINE)/*/*/launch.json

# The lower end of the supported torch range (pyproject.toml), what the GPU machines carry: the package
# and its extension built against torch $(TORCH_FLOOR) in a venv of their own (a copy of the sources,
# so the in-place build of .venv is left alone), then the ops' and the reference model's tests.
TORCH_FLOOR ?= 2.11.0
TORCHVISION_FLOOR ?= 0.26.0
FLOOR_VENV := .venvs/torch-$(TORCH_FLOOR)
torch-floor:
	test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install -q --upgrade pip
	$(FLOOR_VENV)/bin/python -m pip install -q "setuptools>=77" wheel ninja "torch==$(TORCH_FLOOR)" "torchvision==$(TORCHVISION_FLOOR)"
	rm -rf $(FLOOR_VENV)/src && mkdir -p $(FLOOR_VENV)/src
	git ls-files -co --exclude-standard | grep -v '^results/' | tar -cf - -T - | tar -xf - -C $(FLOOR_VENV)/src
	cd $(FLOOR_VENV)/src && CUDA_HOME=$${CUDA_HOME:-$$(test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda)} \
	  TORCH_CUDA_ARCH_LIST=$${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=$${MAX_JOBS:-2} \
	  ../bin/python -m pip install -q --no-build-isolation ".[test]"
	cd $(FLOOR_VENV)/src && ../bin/python -c "import torch; from mrcnn_bench.reference_impl import ops; print('torch', torch.__version__, 'ops', ops.backend())"
	cd $(FLOOR_VENV)/src && ../bin/python -m pytest -q -p no:cacheprovider tests/test_ops.py tests/test_reference_model.py tests/test_cuda_graphs.py

# Each native op against torchvision.ops, as a ratio (CPU, and CUDA where present).
bench-ops: setup
	$(PY) benchmarks/ops.py

# Without the real training runs (a few minutes quicker).
# The unit tests: no test that starts mrcnn-bench or trains (marker e2e), no detectron2 or mmdet install
# (their tests skip, saying so, where they are not installed).
test-fast: setup
	$(PY) -m pytest -q -m "not e2e" tests

# The property-based tests (tests/test_fuzz.py) with many more generated examples than CI's profile: COCO
# splits, configs and run records; Hypothesis' statistics say how many examples each test tried and what it
# found. FUZZ_FEW: the examples that also build the four training loaders (seconds each); FUZZ_TRAIN: those
# that train their first iteration in all four (a minute each).
fuzz: setup detectron2 mmdet
	HYPOTHESIS_PROFILE=fuzz MRCNN_BENCH_FUZZ_FEW=$(or $(FUZZ_FEW),25) MRCNN_BENCH_FUZZ_TRAIN=$(or $(FUZZ_TRAIN),3) \
	  $(PY) -m pytest -q tests/test_fuzz.py \
	  --hypothesis-show-statistics

# Debian's chromium and its driver, for the site's browser test (tests/test_site.py): the package lists are
# updated first (a fresh machine has none); without root or apt it says so loudly, and the test says it is
# skipped and why.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; } || \
	    { echo "*** make browser: could not install Debian's chromium and chromium-driver (no root or no apt?):" >&2; \
	      echo "*** the site's browser test (tests/test_site.py) will be SKIPPED" >&2; }; }

# The results site of the committed baselines (docs/results.md), and the screenshot of its index the README shows.
site: setup browser
	$(BENCH) publish results/baselines --out site
	$(PY) scripts/site_screenshot.py site/index.html results/site-index.png

clean:
	rm -rf build *.egg-info reference_impl/_C*.so
