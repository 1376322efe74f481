# Two commands do everything on a fresh Linux machine with Python 3.11:
#   make book   - create the virtual environment if missing, install, execute the chapters, build the HTML
#   make test   - unit tests, notebook checks, the book build, and every chapter at the smoke profile (nbval)
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= quick
CHAPTERS ?=
FORCE   ?=
RETRAIN ?=
STAMP   := $(VENV)/.installed

.PHONY: book html test unit lint lab benchmark clean distclean

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

test: $(STAMP)
	rm -rf build/nbval
	$(PY) -m helpers.book prepare --profile smoke --out build/nbval
	SHORTCUT_BOOK_RETRAIN=1 TQDM_DISABLE=1 $(PY) -m pytest -p no:cacheprovider tests build/nbval \
		--nbval-lax --nbval-current-env --durations=15

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
