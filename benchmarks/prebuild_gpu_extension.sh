#!/usr/bin/env bash
# Build provg._C with its CUDA sources here, against the torch of the lent GPU machine, into .gpu/ (which
# benchmarks/gpu_check.sh installs when the torch versions match): the device then spends seconds, not
# minutes, on the extension; then compiles every Triton kernel with the Triton that torch brings (the
# device's), which can refuse what the pinned one accepts. Needs PyPI, nvcc (CUDA_HOME) and about 7
# minutes on 2 cores.
#   bash benchmarks/prebuild_gpu_extension.sh [torch version, default 2.11.0] [arch, default 9.0]
# The device's torch version is in KINDS.md of the device tool or in gpu_check.sh's first output line.
set -euo pipefail
TORCH_VERSION=${1:-2.11.0}
ARCH=${2:-9.0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${PREBUILD_DIR:-/tmp/provg-prebuild-$TORCH_VERSION}
CUDA_HOME=${CUDA_HOME:-$(ls -d /usr/local/cuda-13.0 /usr/local/cuda 2>/dev/null | head -1)}
PYTHON=${PYTHON:-python3}
mkdir -p "$WORK"
if ! "$WORK/venv/bin/python" -c "import torch" 2>/dev/null; then
  [ -x "$WORK/venv/bin/python" ] || "$PYTHON" -m venv "$WORK/venv"
  "$WORK/venv/bin/python" -m pip install -q "torch==$TORCH_VERSION" numpy ninja
  # setuptools as pinned for the project, installed on its own: torch 2.11 asks for setuptools < 82, which
  # rejects pyproject.toml's license field (pip warns about the conflict; the build needs the newer one).
  setuptools=$(grep -i '^setuptools==' "$ROOT/requirements.txt" | head -1 || true)
  "$WORK/venv/bin/python" -m pip install -q "${setuptools:-setuptools}" 2>&1 | grep -v "dependency conflicts\|requires setuptools" || true
fi
version=$("$WORK/venv/bin/python" -c "import torch; print(torch.__version__)")
echo "building provg._C against torch $version for sm_${ARCH/./} (CUDA_HOME=$CUDA_HOME)"
cd "$ROOT"
# The host CPU of the device is unknown: AVX2 code runs on any x86-64 server of the last decade.
CUDA_HOME=$CUDA_HOME FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=$ARCH PROVG_CPU_VECTOR=avx2 MAX_JOBS=${MAX_JOBS:-2} \
  "$WORK/venv/bin/python" setup.py --quiet build_ext --build-lib "$WORK/lib" --build-temp "$WORK/tmp"
mkdir -p .gpu
strip --strip-debug -o .gpu/_C.abi3.so "$WORK/lib/provg/_C.abi3.so"
printf '%s' "$version" >.gpu/_C.torch-version
echo "wrote .gpu/_C.abi3.so ($(du -h .gpu/_C.abi3.so | cut -f1)) for torch $version"
# The device's torch brings its own Triton, whose compiler may refuse what the pinned one accepts (3.6
# failed on a string default that 3.8 takes): compile every kernel with it now, before device time.
triton=$("$WORK/venv/bin/python" -c "import triton; print(triton.__version__)")
echo "compiling every Triton kernel for sm_${ARCH/./} with Triton $triton (the device's)"
PYTHONPATH=$ROOT "$WORK/venv/bin/python" tests/triton_compile_check.py --arch "${ARCH/./}" | grep -v '^ok '
