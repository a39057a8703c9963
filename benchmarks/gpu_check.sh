#!/usr/bin/env bash
# One prepared run on a lent GPU machine (the device tool): build the CUDA extension, run the GPU tests,
# run the kernel benchmark and a model timing, write everything under $OUT.
#   device run: bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/provg-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
{
  log "$(date -u) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
  python3 --version
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
} 2>&1 | tee -a "$OUT/summary.txt"

# What the machine lacks travels in .gpu/ (ignored by git, named in the run's carry): wheels
# (pycocotools) and the all-MiniLM-L6-v2 tokenizer files; the pretrained encoder itself is too large to
# carry, so a small random-init BERT with that tokenizer stands in (the checks test mechanics).
if ls .gpu/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -d .gpu/tokenizer ]; then
  python3 benchmarks/make_tiny_text_encoder.py .gpu/tokenizer /tmp/tiny-bert 2>&1 | tail -1 | tee -a "$OUT/summary.txt"
  export PROVG_TEXT_ENCODER=/tmp/tiny-bert
fi
CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
export CUDA_HOME
arch=$(python3 -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')")
log "building provg._C with CUDA (arch $arch, CUDA_HOME=$CUDA_HOME)"
start=$(date +%s)
# Editable install: maps parsers/ to provg.parsers and compiles provg._C with the CUDA sources in place.
# If this machine's setuptools cannot (too old for pyproject metadata), JIT-compile the same sources and
# link the mapped packages into provg/.
if ! TORCH_CUDA_ARCH_LIST="$arch" FORCE_CUDA=1 MAX_JOBS=16 python3 -m pip install --no-build-isolation \
     --no-deps --no-index -e . >"$OUT/build.log" 2>&1; then
  log "editable install failed (see build.log); JIT build"
  ln -sfn ../parsers provg/parsers && ln -sfn ../configs provg/configs
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS=16 python3 - >>"$OUT/build.log" 2>&1 <<'PY'
import glob, shutil
from torch.utils.cpp_extension import load
sources = ["csrc/ops.cpp", "csrc/python_module.cpp", *glob.glob("csrc/cpu/*.cpp"), *glob.glob("csrc/cuda/*.cu")]
module = load("_C", sources, extra_cflags=["-O3", "-fopenmp", "-DPROVG_WITH_CUDA"], extra_ldflags=["-fopenmp"],
              extra_cuda_cflags=["-O3", "-DPROVG_WITH_CUDA"], build_directory="/tmp", verbose=False)
shutil.copy(module.__file__, "provg/_C.so")
PY
fi
python3 -c "import provg.ops as o; print('backends', o.available_backends())" 2>&1 | tee -a "$OUT/summary.txt"

log "GPU tests"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_mask_to_box.py 2>&1 | tee "$OUT/pytest.log" | tail -5 \
  | tee -a "$OUT/summary.txt"

log "mask_to_box benchmark"
python3 benchmarks/bench_mask_to_box.py 2>&1 | tee -a "$OUT/summary.txt"
cp benchmarks/results/mask_to_box.csv "$OUT/" 2>/dev/null

log "model forward timing (GPU)"
python3 benchmarks/bench_forward.py --text-encoder "${PROVG_TEXT_ENCODER:-all-MiniLM-L6-v2}" --parser naive 2>&1 \
  | tee -a "$OUT/summary.txt"
cp benchmarks/results/forward.csv "$OUT/" 2>/dev/null
log "done $(date -u)"
