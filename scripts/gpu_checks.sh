#!/usr/bin/env bash
# The GPU checks of issue 13 (item 7) as one command, for a session lent a GPU machine:
#   scripts/gpu_checks.sh --prepare   # here, with the network: wheels the device image lacks -> .gpu-wheels/
#   then the device tool: run(command="scripts/gpu_checks.sh", carry=[".gpu-wheels"], timeout_s=540)
# On the GPU machine (its image's python3 holds CUDA torch and transformers, and nothing can be fetched there)
# it installs the carried wheels, runs every `gpu`-marked test (bf16 trainer steps under ZeRO-2 and ZeRO-3,
# NCCL bucket sync with 2+ GPUs, vLLM sleep/wake where CUDA vLLM is installed; the rest skip with the reason),
# then measures one ROME-30B-A3B decoder layer against `roll plan`'s per-layer estimate
# (bench/bench_plan_layer.py) and prints its JSON line. Results also go to $OUT when the device tool sets it.
# Exit status: pytest's, or the bench's when pytest passed. Tested on CPU by tests/roll/test_roll_plan.py
# (`--device cpu` runs the same steps on a scaled layer with the repo's venv).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.gpu-wheels

if [[ "${1:-}" == "--prepare" ]]; then
  # pydantic and its core must match exactly; deepspeed is built here as a pure-python wheel (ops JIT there).
  mkdir -p "$WHEELS"
  PY=.venv/bin/python
  ver() { "$PY" -m pip show "$1" | sed -n 's/^Version: //p'; }
  "$PY" -m pip download --quiet --dest "$WHEELS" --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_17_x86_64 --implementation cp \
    "pydantic==$(ver pydantic)" "pydantic-core==$(ver pydantic-core)" "annotated-types==$(ver annotated-types)" \
    "typing-inspection==$(ver typing-inspection)" "hjson==$(ver hjson)"
  "$PY" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$WHEELS" "deepspeed==$(ver deepspeed)"
  grep -qxF "/$WHEELS/" .git/info/exclude 2>/dev/null || echo "/$WHEELS/" >> .git/info/exclude
  ls -la "$WHEELS"
  exit 0
fi

DEVICE=cuda
PY=python3
if [[ "${1:-}" == "--device" && "${2:-}" == "cpu" ]]; then
  DEVICE=cpu
  PY=.venv/bin/python
fi
OUT=${OUT:-$(mktemp -d)}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONDONTWRITEBYTECODE=1 TOKENIZERS_PARALLELISM=false

if [[ $DEVICE == cuda ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
  if [[ -d $WHEELS ]]; then
    "$PY" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" "$WHEELS"/*.whl 2>&1 | tail -3
  fi
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'gpus', torch.cuda.device_count())" | tee -a "$OUT/gpu.txt"
fi

# Only the files that hold gpu tests: collecting the whole suite would import Docker, Ray and vLLM.
mapfile -t FILES < <(grep -rlE "mark\.gpu|pytestmark = pytest\.mark\.gpu" tests --include='test_*.py')
echo "gpu test files: ${FILES[*]}"
set +e
"$PY" -m pytest -m gpu -p no:cacheprovider -q -rs "${FILES[@]}" 2>&1 | tee "$OUT/pytest_gpu.txt"
TESTS=${PIPESTATUS[0]}
# grouped_mm is what from_pretrained picks; eager (a loop over the experts) is its fallback: one line each
BENCH=0
for EXPERTS in eager grouped_mm; do
  "$PY" bench/bench_plan_layer.py --device "$DEVICE" --experts $EXPERTS | tee -a "$OUT/bench_plan_layer.json"
  [[ ${PIPESTATUS[0]} -ne 0 ]] && BENCH=1
done
set -e
echo "gpu_checks: pytest exit $TESTS, bench exit $BENCH, results in $OUT"
[[ $TESTS -ne 0 ]] && exit "$TESTS"
exit "$BENCH"
