# provg: `make demo` runs the demo, `make test` runs every check. Both create .venv when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.provg-installed
SOURCES := setup.py pyproject.toml requirements.txt $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh)
# The CUDA toolkit root (the folder whose lib/ holds libcudart), for compiling csrc/cuda.
CUDA_HOME ?= $(firstword $(wildcard /usr/local/cuda-13.0 /usr/local/cuda))
TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
export TORCH_CUDA_ARCH_LIST

.PHONY: demo test venv lint format pytest cpp-test cuda-build clean

venv: $(STAMP)

$(STAMP): $(SOURCES)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e .
	@touch $@

demo: venv
	$(VENV)/bin/provg demo

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

pytest: venv
	$(PY) -m pytest

# libtorch build of csrc/ and its C++ test (see CMakeLists.txt).
cpp-test: venv
	@set -e; \
	nvrtc=$$($(PY) -c "import glob, os, nvidia; print((sorted(glob.glob(os.path.join(list(nvidia.__path__)[0], '*', 'lib', 'libnvrtc.so.*'))) or [''])[0])"); \
	cmake -S . -B build/cmake -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
	  -DCUDA_TOOLKIT_ROOT_DIR=$(CUDA_HOME) -DCUDAToolkit_ROOT=$(CUDA_HOME) $${nvrtc:+-DCUDA_nvrtc_LIBRARY=$$nvrtc} >/dev/null; \
	cmake --build build/cmake -j 2; \
	ctest --test-dir build/cmake --output-on-failure

# Compile and link the extension with its CUDA sources (nvcc), into build/ so the installed CPU build
# is untouched: the CUDA code is checked on machines without a GPU.
cuda-build: venv
	@test -n "$(CUDA_HOME)" || { echo "no CUDA toolkit found: set CUDA_HOME"; exit 1; }
	CUDA_HOME=$(CUDA_HOME) FORCE_CUDA=1 MAX_JOBS=2 $(PY) setup.py --quiet build_ext \
	  --build-lib build/cuda --build-temp build/cuda-tmp
	@ls build/cuda/provg/_C*.so

test: lint cpp-test cuda-build pytest

clean:
	rm -rf build runs .pytest_cache .ruff_cache
