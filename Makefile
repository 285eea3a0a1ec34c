# neuro: `make demo` runs the main job, `make test` installs then runs the whole suite (what CI runs),
# `make test-fast` the suite without the tests marked slow, `make lint` ruff (configured in pyproject.toml).
# `make install` builds .venv/ at the repository root (Python 3.11, about a minute the first time) and
# does nothing while pyproject.toml, constraints.txt and this Makefile are unchanged.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || echo python3)
VENV   := .venv
PY     := $(VENV)/bin/python
# --no-compile: byte-compiling all of torch at install costs ~30 s; modules compile on first import.
PIP    := $(PY) -m pip --disable-pip-version-check install -q --no-compile
CONSTRAINTS := constraints.txt
STAMP  := $(VENV)/.installed
CHECK_311 := 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else sys.executable + " is Python " \
  + sys.version.split()[0] + "; neuro needs 3.11 (torch 2.13.0 CPU wheel, lava-nc 0.10.0): rm -rf .venv and run \
  make install PYTHON=python3.11")'

.PHONY: install demo test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS) Makefile
	test -x $(PY) || { $(PYTHON) -c $(CHECK_311) && $(PYTHON) -m venv $(VENV); }
	@$(PY) -c $(CHECK_311)
# Versions come from constraints.txt. torch and numpy first (the CPU wheel, numpy 1.x), then the rest,
# this package and lava-nc's dependencies (scikit-learn, asteval, networkx) included.
	$(PIP) -c $(CONSTRAINTS) torch numpy
	$(PIP) -c $(CONSTRAINTS) scikit-learn asteval networkx -e ".[test,brian2,nir,ray,yardsticks]"
# lava-nc 0.10.0 declares python <3.11: --ignore-requires-python for it alone (given to a resolving
# install, pip would also accept a scipy too new for 3.11's wheels and build it from source); its
# dependencies came with the line above.
	$(PIP) --no-deps --ignore-requires-python "lava-nc==0.10.0"
# norse without its dependencies: it would pull torchvision, unused here.
	$(PIP) --no-deps "norse==1.1.0"
# neurobench (its metrics) and tonic (event-file readers) without the audio stacks they declare: torchaudio is
# a CUDA build here that fails to import, librosa is unused; what they use is installed above or named here.
	$(PIP) --no-deps "neurobench==2.3.0" "snntorch==1.0.0" "tonic==1.7.0" "importRosbag==1.0.4" "expelliarmus==1.1.12"
	$(PY) -m hw_targets.check_install
	touch $(STAMP)

demo: install
	$(VENV)/bin/neuro demo

# The tests run in TEST_WORKERS processes (pytest-xdist; 2, one per core of the 2-core machines the suite is
# timed on): `make test TEST_WORKERS=4` on a larger machine, TEST_WORKERS=0 runs them in this one process.
# --dist worksteal gives each worker a contiguous half of the tests (a file's tests stay together, so a module
# fixture, a sweep or a bench run, is mostly built once) and moves the tail of a busy worker's queue to an idle one.
# (Not loadgroup: pytest-xdist 3.8.0 groups by rewriting a node-id field that pytest 9.2 no longer reads.)
TEST_WORKERS ?= 2
XDIST = $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist worksteal)
# pytest's status 5 means no test was collected: a failure, said plainly.
PYTEST = $(PY) -m pytest -q $(XDIST) --durations=15 $(1) || { status=$$?; [ $$status -ne 5 ] || echo "pytest collected no tests" >&2; exit $$status; }

test: install
	$(call PYTEST,)

# Leaves out the tests marked slow (compiling, Lava, Brian2, Ray, the notebooks, the CLI in subprocesses).
test-fast: install
	$(call PYTEST,-m "not slow")

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(VENV)/bin/neuro bench sim

clean:
	rm -rf $(VENV) runs .pytest_cache build dist *.egg-info
