#!/usr/bin/env bash
# The protocols' runs that wait for a GPU, in one call on a lent machine (16 cores, one GPU), from the repository root:
#   S=SECONDS bash bench/gpu_protocols.sh OUT_DIR [FASHION_MNIST_DIR]
# Each arena starts from the runs committed under reports/arena/<preset> (skipped, on the same data: carry Fashion-MNIST's four
# IDX .gz files in an ignored folder, e.g. data/fashion-mnist, and name it), so a call only adds runs:
# - three_scenarios' Permuted Fashion-MNIST rows on the GPU (2 x 1000 units, 5000 iterations of batch 128 a task, 10 tasks:
#   about 20 minutes a run on one core of the 2-core CPU machine, 21 ms a step);
# - der_paper's unfinished runs on the CPU cores (its MLP 100-100 at batch 10 is all per-step overhead: a core per run beats the GPU);
# - the capture test with host synchronisation flagged as an error (tests/test_gpu_algorithms.py).
# Each arena stops at S seconds (default 400). The new runs' metrics.json come back in OUT_DIR/<preset>-runs.tgz:
#   tar xzf OUT_DIR/three_scenarios-runs.tgz -C reports/arena/three_scenarios --skip-old-files
source "$(dirname "$0")/gpu_common.sh"
S=${S:-400}
ARENA=(python3 -c "from clarena.league import main; main()")  # clarena-arena: a preset is a league
touch /tmp/protocols.start
for p in der_paper three_scenarios; do
  mkdir -p /tmp/arena/$p; [ -d reports/arena/$p ] && cp -rn reports/arena/$p/. /tmp/arena/$p/
done
( timeout "$S" "${ARENA[@]}" preset=der_paper arena.dir=/tmp/arena/der_paper n_jobs=11 paths.data_dir="$DATA" \
    > "$OUT/der_paper.log" 2>&1; echo "der_paper exit $?" >> "$OUT/der_paper.log" ) &
( timeout "$S" "${ARENA[@]}" preset=three_scenarios "only_benchmarks=Permuted FMNIST TIL,Permuted FMNIST DIL,Permuted FMNIST CIL" \
    arena.dir=/tmp/arena/three_scenarios n_jobs=3 trainer=gpu paths.data_dir="$DATA" \
    > "$OUT/three_scenarios.log" 2>&1; echo "three_scenarios exit $?" >> "$OUT/three_scenarios.log" ) &
[ "${RUN_GPU_TEST:-1}" = 1 ] && timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_gpu_algorithms.py > "$OUT/test_gpu_algorithms.log" 2>&1; echo "pytest exit $?" >> "$OUT/test_gpu_algorithms.log"
wait
for f in "$OUT"/*.log; do tail -n 3 "$f"; done
for p in der_paper three_scenarios; do
  (cd /tmp/arena/$p && find runs -name metrics.json -newer /tmp/protocols.start > /tmp/new_$p.txt
   [ -s /tmp/new_$p.txt ] && tar czf "$OUT/$p-runs.tgz" -T /tmp/new_$p.txt
   echo "$p: $(wc -l < /tmp/new_$p.txt) new finished runs, $(find runs -name metrics.json | wc -l) in all")
done
ls -la "$OUT"
