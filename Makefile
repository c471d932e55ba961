# The README's two commands. Each sets itself up (a .venv in the checkout) and is idempotent.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.visionattn-installed
PYTEST_ARGS ?=

.PHONY: setup demo test lint clean-venv

setup: $(STAMP)

$(STAMP): setup.py tools/install.sh
	bash tools/install.sh
	touch $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) tools/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
