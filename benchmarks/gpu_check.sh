#!/usr/bin/env bash
# One prepared run on a lent GPU machine (the device tool): build the CUDA extension, run the GPU tests,
# run the kernel benchmarks, write everything under $OUT. Each step has its own time limit so a slow
# step cannot eat the others' results.
#   device run: bash benchmarks/gpu_check.sh [steps...]   (steps: tests mask forward pcm repconv; default all)
set -uo pipefail
OUT=${OUT:-/tmp/provg-gpu}
STEPS=${*:-tests mask forward pcm repconv}
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
TORCH_CUDA_ARCH_LIST="$arch" FORCE_CUDA=1 MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps \
  --no-index -e . >"$OUT/build.log" 2>&1
log "build exit $? in $(( $(date +%s) - start )) s"
python3 -c "import provg.ops as o; print('backends', o.available_backends())" 2>&1 | tee -a "$OUT/summary.txt"

for step in $STEPS; do
  start=$(date +%s)
  case $step in
    tests)
      log "GPU tests"
      timeout ${TEST_TIMEOUT:-240} python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_mask_to_box.py \
        tests/test_gate_backends.py tests/test_rep_bn_add_silu.py tests/test_conv3x3_bias_silu.py \
        -k "gpu or cuda or mask" 2>&1 | tee "$OUT/pytest.log" | tail -8 \
        | tee -a "$OUT/summary.txt" ;;
    mask)
      log "mask_to_box benchmark"
      timeout 120 python3 benchmarks/bench_mask_to_box.py 2>&1 | tee -a "$OUT/summary.txt" ;;
    forward)
      log "model forward timing (GPU)"
      timeout 180 python3 benchmarks/bench_forward.py --text-encoder "${PROVG_TEXT_ENCODER:-all-MiniLM-L6-v2}" \
        --parser naive 2>&1 | tee -a "$OUT/summary.txt" ;;
    pcm)
      log "PCM gate benchmark (GPU, B = 8)"
      timeout ${PCM_TIMEOUT:-300} python3 benchmarks/bench_pcm.py ${PCM_ARGS:---repeat 20} 2>&1 | tee "$OUT/pcm.log" | tail -40 \
        | tee -a "$OUT/summary.txt" ;;
    repconv)
      log "RepVGG kernels benchmark (GPU, B = 8)"
      timeout ${REPCONV_TIMEOUT:-240} python3 benchmarks/bench_repconv.py ${REPCONV_ARGS:---repeat 20} 2>&1 \
        | tee "$OUT/repconv.log" | tail -40 | tee -a "$OUT/summary.txt" ;;
  esac
  log "step $step: $(( $(date +%s) - start )) s"
done
cp benchmarks/results/*.csv "$OUT/" 2>/dev/null
log "done $(date -u)"
