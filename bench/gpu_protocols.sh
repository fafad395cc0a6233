#!/usr/bin/env bash
# The protocol leagues on a lent GPU machine (16 cores, one GPU), in one call, from the repository root:
#   bash bench/gpu_protocols.sh OUT_DIR SECONDS
# der_paper (Fashion-MNIST, 3 seeds) on the CPU cores (its MLP 100-100 at batch 10 is all per-step overhead: a core per run beats the GPU),
# three_scenarios (2 seeds) on the GPU beside it, and the capture test with host synchronisation flagged as an error. Each stops at
# SECONDS; the arena skips finished runs, so a later call completes a protocol. The finished runs (no checkpoints) come back as tarballs.
source "$(dirname "$0")/gpu_common.sh"
S=${2:-420}
ARENA=(python3 -c "from clarena.arena import main; main()")
( timeout "$S" "${ARENA[@]}" preset=der_paper seeds=0,1,2 arena.dir=/tmp/arena/der_paper n_jobs=11 trainer.accelerator=cpu \
    > "$OUT/der_paper.log" 2>&1; echo "der_paper exit $?" >> "$OUT/der_paper.log" ) &
( timeout "$S" "${ARENA[@]}" preset=three_scenarios seeds=0,1 arena.dir=/tmp/arena/three_scenarios n_jobs=3 trainer=gpu \
    > "$OUT/three_scenarios.log" 2>&1; echo "three_scenarios exit $?" >> "$OUT/three_scenarios.log" ) &
[ "${RUN_GPU_TEST:-1}" = 1 ] && timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_gpu_algorithms.py > "$OUT/test_gpu_algorithms.log" 2>&1; echo "pytest exit $?" >> "$OUT/test_gpu_algorithms.log"
wait
for f in "$OUT"/*.log; do tail -n 3 "$f"; done
for p in der_paper three_scenarios; do
  [ -d /tmp/arena/$p ] && tar czf "$OUT/$p.tgz" -C /tmp/arena --exclude='*.ckpt' --exclude='csv' --exclude='*.png' --exclude='*.html' $p
  echo "$p: $(find /tmp/arena/$p -name metrics.json | wc -l) finished runs"
done
ls -la "$OUT"
