#!/usr/bin/env bash
# The GPU side of the speed issue in one go, on a machine with a CUDA GPU, from the repository root:
#   bash bench/gpu_check.sh OUT_DIR [FASHION_MNIST_DIR] [YARDSTICK]
# 1. tests/test_speed.py's GPU tests: captured steps (fp32 and bf16) against eager steps, Finetuning and HAT;
# 2. bench_pmnist.py: the yardstick and clarena, 10 tasks x 1 epoch, batch 64, MLP 256x2, Finetuning and HAT, clarena
#    as configured by default (speed.steps_per_call=auto), with one step per Lightning step (plain), and with capture
#    (capture: auto chunks; capture1: one captured step per Lightning step);
# 3. bench_seeds.py: 8 seeds of the default experiment at once against one, with capture.
source "$(dirname "$0")/gpu_common.sh"
timeout 150 python3 -m pytest -x -q -s -p no:cacheprovider tests/test_speed.py -k gpu > "$OUT/test_gpu.log" 2>&1; echo "pytest exit $?" >> "$OUT/test_gpu.log"
grep -E "max difference|passed|failed|Error|exit" "$OUT/test_gpu.log" | tail -12
timeout 300 python3 bench/bench_pmnist.py --device cuda --tasks 10 --batch 64 --repeat 1 --data "$DATA" --yardstick "$Y" \
  --variant plain=speed.steps_per_call=1 --variant capture=speed.capture=true --variant capture1=speed.capture=true,speed.steps_per_call=1 \
  --json "$OUT/bench_pmnist.jsonl" > "$OUT/bench_pmnist.log" 2>&1; echo "bench_pmnist exit $?" >> "$OUT/bench_pmnist.log"
grep -v "^{" "$OUT/bench_pmnist.log" | tail -20
timeout 120 python3 bench/bench_seeds.py --seeds 8 --json "$OUT/bench_seeds.json" -- trainer=gpu speed.capture=true > "$OUT/bench_seeds.log" 2>&1
echo "bench_seeds exit $?" >> "$OUT/bench_seeds.log"; tail -3 "$OUT/bench_seeds.log"
