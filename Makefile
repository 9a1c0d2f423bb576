# Every target creates and uses .venv itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test train notebooks lint bench gradcheck lab

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,lint]'
	$(BIN)/pip install -q torch==2.13.0
	touch $(STAMP)

install: $(STAMP)

# One BLAS/OpenMP thread per process in the tests: small matrices, and no oversubscription
# when torch and OpenBLAS share the two cores.
test: $(STAMP)
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 RNNCORE_REQUIRE_TORCH=1 $(BIN)/python -m pytest -q -rs tests

# The main job: a multi-layer character LSTM on a built-in corpus, about two minutes.
train: $(STAMP)
	$(BIN)/python -m rnncore.train

# Re-execute every notebook from its source and store the outputs.
notebooks: $(STAMP)
	$(BIN)/python notebooks/build.py --execute

lint: $(STAMP)
	$(BIN)/ruff check rnncore tests notebooks

bench: $(STAMP)
	$(BIN)/python -m rnncore.bench

gradcheck: $(STAMP)
	$(BIN)/python -m rnncore.gradcheck

# Jupyter Lab in notebooks/ with the notebooks extra installed (start with 08_exercises)
LAB_STAMP := $(VENV)/.lab-installed

$(LAB_STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[notebooks]'
	touch $(LAB_STAMP)

lab: $(LAB_STAMP)
	cd notebooks && ../$(BIN)/jupyter lab
