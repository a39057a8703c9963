#!/usr/bin/env bash
# One prepared run on a lent GPU machine (the device tool): install provg with its CUDA extension, run the
# GPU tests, run the kernel benchmarks, write everything under $OUT. Each step has its own time limit so a
# slow step cannot eat the others' results; the benchmarks run one op or part per process for the same
# reason.
#   device run: bash benchmarks/gpu_check.sh [steps...]
#     steps: tests pcm pcm-graph pcm-toy repconv repconv-graph forward mask (default: tests pcm-toy
#     pcm-graph pcm repconv-graph repconv, about 8 minutes with the extension carried: 462 s on an H200;
#     with PCM_ARGS/REPCONV_ARGS "--repeat 20 --no-compile", two gates and the tail only, 180 s); the
#     -graph steps time replays of CUDA graphs (the device's work without the host's), pcm-toy a 4 × 8
#     gate (each provider's host cost per call).
#   Before it, here: bash benchmarks/prebuild_gpu_extension.sh (the device's torch), so the device skips
#   the CUDA compile (100 s there), and carry .gpu.
#     Knobs: TEST_FILES, PCM_OPS, PCM_ARGS, REPCONV_PARTS (default tail chain kernels conv;
#     REPCONV_GRAPH_PARTS for repconv-graph, default REPCONV_PARTS without chain),
#     REPCONV_ARGS and the *_TIMEOUT seconds.
# Files back (at most 8): summary.txt, build.log, pytest.log, pcm.log, repconv.log, results.tar.
set -uo pipefail
OUT=${OUT:-/tmp/provg-gpu}
STEPS=${*:-tests pcm-toy pcm-graph pcm repconv-graph repconv}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
{
  echo "== $(date -u) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
  python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.is_available())"
} 2>&1 | tee -a "$OUT/summary.txt"

# What the machine lacks travels in .gpu/ (ignored by git, named in the run's carry): wheels
# (pycocotools), the all-MiniLM-L6-v2 tokenizer files, and optionally a provg._C built ahead on the
# developer machine against the device's torch (.gpu/_C.abi3.so with that torch version in
# .gpu/_C.torch-version), which saves the device the CUDA compile. The pretrained encoder itself is too
# large to carry, so a small random-init BERT with that tokenizer stands in (the checks test mechanics).
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
torch_version=$(python3 -c "import torch; print(torch.__version__)")
start=$(date +%s)
if [ -f .gpu/_C.abi3.so ] && [ "$(cat .gpu/_C.torch-version 2>/dev/null)" = "$torch_version" ]; then
  log "installing provg with the carried provg._C (built ahead against torch $torch_version)"
  PROVG_NO_EXTENSION=1 python3 -m pip install --no-build-isolation --no-deps --no-index -e . >"$OUT/build.log" 2>&1
  cp .gpu/_C.abi3.so provg/
  python3 -c "import torch, provg._C" >>"$OUT/build.log" 2>&1 || { log "carried provg._C does not load"; rm -f provg/_C.abi3.so; }
fi
if [ ! -f provg/_C.abi3.so ]; then
  log "building provg._C with CUDA (arch $arch, CUDA_HOME=$CUDA_HOME)"
  # Editable install: maps parsers/ to provg.parsers and compiles provg._C with the CUDA sources in place.
  TORCH_CUDA_ARCH_LIST="$arch" FORCE_CUDA=1 MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps \
    --no-index -e . >>"$OUT/build.log" 2>&1
fi
log "install exit $? in $(( $(date +%s) - start )) s"
python3 -c "import provg.ops as o; print('backends', o.available_backends())" 2>&1 | tee -a "$OUT/summary.txt"

for step in $STEPS; do
  start=$(date +%s)
  case $step in
    tests)
      log "GPU tests (pytest-xdist, 8 workers)"
      timeout ${TEST_TIMEOUT:-200} python3 -m pytest -q -p no:cacheprovider -n 8 --timeout 150 \
        ${TEST_FILES:-tests/test_cuda.py tests/test_mask_to_box.py tests/test_gate_backends.py tests/test_gate_large_tensors.py \
        tests/test_rep_bn_add_silu.py tests/test_conv3x3_bias_silu.py} -k "gpu or cuda" 2>&1 | tee "$OUT/pytest.log" | tail -25 \
        | tee -a "$OUT/summary.txt" ;;
    pcm | pcm-graph)
      graph=$([ "$step" = pcm-graph ] && echo --graph)
      log "PCM gate benchmark (GPU, B = 8) $graph"
      for op in ${PCM_OPS:-survey locate verify}; do
        timeout ${PCM_TIMEOUT:-120} python3 benchmarks/bench_pcm.py --ops "$op" $graph ${PCM_ARGS:---repeat 20} 2>&1 \
          | tee -a "$OUT/pcm.log" | tail -22 | tee -a "$OUT/summary.txt"
      done ;;
    pcm-toy)
      log "PCM gates at a toy shape (GPU, B = 8): host cost per call"
      timeout ${PCM_TIMEOUT:-120} python3 benchmarks/bench_pcm.py --toy --repeat 100 2>&1 \
        | tee -a "$OUT/pcm.log" | tail -16 | tee -a "$OUT/summary.txt" ;;
    repconv | repconv-graph)
      graph=$([ "$step" = repconv-graph ] && echo --graph)
      parts=${REPCONV_PARTS:-tail chain kernels conv}
      # The chain (8 tails under one backward, as a model runs them) has no graph form.
      [ -n "$graph" ] && parts=${REPCONV_GRAPH_PARTS:-${parts//chain/}}
      log "RepVGG kernels benchmark (GPU, B = 8) $graph"
      for part in $parts; do
        timeout ${REPCONV_TIMEOUT:-120} python3 benchmarks/bench_repconv.py --parts "$part" $graph \
          ${REPCONV_ARGS:---repeat 20} 2>&1 | tee -a "$OUT/repconv.log" | tail -16 | tee -a "$OUT/summary.txt"
      done ;;
    forward)
      log "model forward timing (GPU)"
      timeout 180 python3 benchmarks/bench_forward.py --text-encoder "${PROVG_TEXT_ENCODER:-all-MiniLM-L6-v2}" \
        --parser naive 2>&1 | tee -a "$OUT/summary.txt" ;;
    mask)
      log "mask_to_box benchmark"
      timeout 120 python3 benchmarks/bench_mask_to_box.py 2>&1 | tee -a "$OUT/summary.txt" ;;
  esac
  log "step $step: $(( $(date +%s) - start )) s"
  # After every step, so that a run stopped at its time limit still brings back the rows it wrote.
  tar -cf "$OUT/results.tar" benchmarks/results/*.csv 2>/dev/null
done
log "done $(date -u)"
