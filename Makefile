# Two entry points, each sets everything up on first use:  make demo   and   make test
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test lint figures bench clean wheelhouse lab

# Offline GPU nodes: `make wheelhouse PYTHON_VERSION=3.12` downloads every wheel the project needs
# except torch (install your CUDA torch there first) into $(WHEELHOUSE); copy it over, then
#   pip install --no-index --find-links $(WHEELHOUSE) -e '.[all]'
PYTHON_VERSION ?= 3.12
WHEELHOUSE ?= .whl
EXTRAS ?= all

setup: $(STAMP)

# torch is pinned to the CPU wheel that lies on this machine's disk: an unpinned torch pulls a multi-GB CUDA build.
# On a GPU machine install your CUDA torch first, then `pip install -e '.[all]'`.
$(STAMP): pyproject.toml
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { echo "installing Debian's chromium (static figure export, report screenshots)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	    echo "warning: could not install chromium; PNG/SVG export and browser tests will be skipped"; }
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>/dev/null
	$(PY) -m pip install -q "torch==2.13.0" 2>/dev/null || $(PY) -m pip install -q "torch>=2.3"
	$(PY) -m pip install -q -e ".[all,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/t2i-audit demo

test: $(STAMP)
	$(VENV)/bin/ruff check analysis tests benchmarks notebooks tools
	$(VENV)/bin/ruff format --check -q analysis tests benchmarks notebooks
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check analysis tests benchmarks notebooks tools
	$(VENV)/bin/ruff format --check analysis tests benchmarks notebooks

figures: $(STAMP)
	$(VENV)/bin/t2i-audit figures --all

lab: $(STAMP)
	cd notebooks && ../$(VENV)/bin/jupyter lab ethnic_bias.ipynb i2p.ipynb dataset_side.ipynb

bench: $(STAMP)
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_classify.py
	$(PY) benchmarks/bench_stats.py
	$(PY) benchmarks/bench_analysis.py --classify-images 0
	$(PY) benchmarks/bench_rundir.py

clean:
	rm -rf $(VENV) .pytest_cache

wheelhouse: $(STAMP)
	$(PY) tools/wheelhouse.py --python-version $(PYTHON_VERSION) --extras $(EXTRAS) --dest $(WHEELHOUSE)
