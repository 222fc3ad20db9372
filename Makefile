# Two entry points, each doing all of its own set-up on a fresh machine:
#   make demo  - light runtime install (numpy, OpenCV, ONNX Runtime; no torch) and
#                detection with the built-in car model on the built-in street clip
#   make test  - full dev install (torch, export, OpenVINO, test tools) and the test suite
PYTHON ?= python3
DEV_VENV ?= .venv
RUNTIME_VENV ?= .venv-runtime
PYTEST_ARGS ?=

.PHONY: demo test lint clean

$(RUNTIME_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/pip install --quiet --upgrade pip
	$(RUNTIME_VENV)/bin/pip install --quiet .
	touch $@

$(DEV_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(DEV_VENV)
	$(DEV_VENV)/bin/pip install --quiet --upgrade pip
	$(DEV_VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

demo: $(RUNTIME_VENV)/.installed
	$(RUNTIME_VENV)/bin/patchdet detect --save-video out/demo/annotated.mp4 --jsonl out/demo/detections.jsonl --summary out/demo/summary.json
	@echo "wrote out/demo/annotated.mp4, out/demo/detections.jsonl, out/demo/summary.json"

test: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/ruff check .
	$(DEV_VENV)/bin/hadolint docker/*.Dockerfile

clean:
	rm -rf $(DEV_VENV) $(RUNTIME_VENV) .venv-serve out build *.egg-info
