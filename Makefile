# Two commands do everything on a fresh Linux machine with Python 3.11:
#   make book   - create the virtual environment if missing, install, execute the chapters, build the HTML
#   make test   - lint, unit tests, notebook checks, the book build, every chapter at smoke (nbval)
#   make lint   - ruff check and ruff format --check (make format applies the formatter)
#   make pdf    - the whole book as one PDF (_build/book.pdf), printed by Debian's Chromium from the HTML
#   make publish - push the HTML that `make book` built (_build/html) to the gh-pages branch
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= quick
CHAPTERS ?=
FORCE   ?=
RETRAIN ?=
STAMP   := $(VENV)/.installed
# The browser test drives Debian's Chromium (never a browser build downloaded at run time).
CHROMIUM ?= /usr/bin/chromium
# make test runs its files on TEST_WORKERS processes (pytest-xdist, one file per process at a time:
# a notebook's cells share one kernel) with TEST_THREADS torch threads each, so both cores work.
TEST_WORKERS ?= 2
TEST_THREADS ?= 1
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: book html pdf publish test unit lint format lab benchmark clean distclean
LINTED  := helpers tests benchmarks notebooks

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip check
	@touch $(STAMP)

book: $(STAMP)
	$(PY) -m helpers.book run --profile $(PROFILE) $(if $(CHAPTERS),--chapters $(CHAPTERS)) \
		$(if $(FORCE),--force) $(if $(RETRAIN),--retrain)

html: $(STAMP)
	$(PY) -m helpers.book html

# Every HTML build also packs _build/notebooks.zip (helpers.book.downloads). The PDF is printed by
# Chromium from the built HTML, so the book is built first when it is missing.
pdf: $(STAMP) $(CHROMIUM)
	@test -f _build/html/index.html || $(PY) -m helpers.book html
	$(PY) -m helpers.book.pdf --html _build/html --out _build/book.pdf

publish: $(STAMP)
	@test -f _build/html/index.html || { echo "no _build/html: run make book first"; exit 1; }
	$(PY) -m ghp_import --no-jekyll --push --force _build/html

$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "the browser test needs Chromium at $(CHROMIUM)"; exit 1; }
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

format: $(STAMP)
	$(VENV)/bin/ruff check --fix $(LINTED)
	$(VENV)/bin/ruff format $(LINTED)

test: lint $(CHROMIUM)
	rm -rf build/nbval
	$(PY) -m helpers.book prepare --profile smoke --out build/nbval
	SHORTCUT_BOOK_RETRAIN=1 TQDM_DISABLE=1 SHORTCUT_BOOK_CHROMIUM=$(CHROMIUM) \
		OMP_NUM_THREADS=$(TEST_THREADS) MKL_NUM_THREADS=$(TEST_THREADS) \
		$(PY) -m pytest -p no:cacheprovider tests build/nbval \
		--nbval-lax --nbval-current-env --durations=15 -n $(TEST_WORKERS) --dist loadfile

unit: $(STAMP)
	$(PY) -m pytest -p no:cacheprovider tests

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

benchmark: $(STAMP)
	$(PY) benchmarks/throughput.py

clean:
	rm -rf _build build

distclean: clean
	rm -rf $(VENV) data
