# Sourced by the gpu_check*.sh scripts with their arguments: OUT_DIR [FASHION_MNIST_DIR] [YARDSTICK] -> $OUT, $DATA, $Y; the
# environment of every run; the GPU, torch and Lightning versions into $OUT/gpu.txt.
set -u
OUT=${1:?an output directory}; DATA=${2:-/usr/share/datasets/fashion-mnist}; Y=${3:-../shared/bench/limit_pmnist.py}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name())"; } | tee "$OUT/gpu.txt"
