#!/usr/bin/env bash
# The GPU side of the replay/league issue in one go, on a machine with a CUDA GPU, from the repository root:
#   bash bench/gpu_check_algorithms.sh OUT_DIR [FASHION_MNIST_DIR] [YARDSTICK]
# 1. tests/test_gpu_algorithms.py: every capturable algorithm, captured steps against eager ones;
# 2. bench_steps.py: each algorithm's training step against Finetuning's, eager, then with capture where it can;
# 3. bench_pmnist.py: HAT against the plain-PyTorch yardstick, 10 tasks x 1 epoch, batch 64, with capture.
source "$(dirname "$0")/gpu_common.sh"
timeout 180 python3 -m pytest -q -s -p no:cacheprovider tests/test_gpu_algorithms.py > "$OUT/test_gpu_algorithms.log" 2>&1; echo "pytest exit $?" >> "$OUT/test_gpu_algorithms.log"
grep -E "max acc difference|passed|failed|Error|exit" "$OUT/test_gpu_algorithms.log" | tail -20
timeout 100 python3 bench/bench_steps.py --device cuda --repeat 2 --out "$OUT/steps-gpu.jsonl" > "$OUT/steps-gpu.log" 2>&1; echo "bench_steps eager exit $?" >> "$OUT/steps-gpu.log"
tail -16 "$OUT/steps-gpu.log"
timeout 100 python3 bench/bench_steps.py --device cuda --repeat 2 --capture --out "$OUT/steps-gpu-capture.jsonl" > "$OUT/steps-gpu-capture.log" 2>&1; echo "bench_steps capture exit $?" >> "$OUT/steps-gpu-capture.log"
tail -16 "$OUT/steps-gpu-capture.log"
timeout 120 python3 bench/bench_pmnist.py --device cuda --algo hat --tasks 10 --batch 64 --repeat 1 --data "$DATA" --yardstick "$Y" \
  --variant capture=speed.capture=true --json "$OUT/bench_pmnist.jsonl" > "$OUT/bench_pmnist.log" 2>&1; echo "bench_pmnist exit $?" >> "$OUT/bench_pmnist.log"
grep -v "^{" "$OUT/bench_pmnist.log" | tail -12
