"""EWC's diagonal Fisher layer by layer against a gradient per sample, on the MLP of van de Ven & Tolias' split protocol.

`diag_fisher` with `module=` (every trainable parameter a linear layer's) takes one matrix product per layer, $(w \\odot \\delta^2)^\\top a^2$,
in place of a gradient per sample (`06a_ewc`). Both ways on the same random batches of 64 (784-400-400 MLP, a 2-output task head,
eval mode), each kind of Fisher, in one process; the ratio and the largest relative difference are printed, and with `--out` appended
as one JSON line with the load average.

    OMP_NUM_THREADS=1 python bench/bench_fisher.py --out bench/results/fisher-cpu.jsonl
"""
import argparse
import json
import os
import platform
import time

import torch
from torch.func import functional_call

from clarena.algorithms.ewc import FISHER_KINDS, diag_fisher


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(784, 400), torch.nn.ReLU(), torch.nn.Linear(400, 400), torch.nn.ReLU(),
                              torch.nn.Linear(400, 2)).eval()
    params = {k: v.detach() for k, v in net.named_parameters()}
    X, Y = torch.randn(a.samples, 784), torch.randint(0, 2, (a.samples,))
    batches = lambda: [(X[i:i + 64], Y[i:i + 64]) for i in range(0, a.samples, 64)]
    fn = lambda p, x: functional_call(net, p, (x,))
    for kind in FISHER_KINDS:
        t = time.perf_counter(); slow = diag_fisher(fn, params, batches(), kind); t_sample = time.perf_counter() - t
        t = time.perf_counter(); fast = diag_fisher(fn, params, batches(), kind, module=net); t_layer = time.perf_counter() - t
        diff = max(((slow[k] - fast[k]).abs().max() / slow[k].abs().max()).item() for k in slow)
        row = dict(kind=kind, samples=a.samples, per_sample_s=round(t_sample, 3), layer_by_layer_s=round(t_layer, 3),
                   ratio=round(t_sample / t_layer, 1), max_rel_diff=float(f"{diff:.2e}"), load_avg=os.getloadavg()[0],
                   threads=torch.get_num_threads(), torch=torch.__version__, machine=platform.machine(), date=time.strftime("%Y-%m-%d"))
        print(json.dumps(row), flush=True)
        if a.out:
            with open(a.out, "a") as f: f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
