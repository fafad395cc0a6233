"""The cost of one training step of each algorithm, relative to Finetuning's on the same batch size, in one process.

For each algorithm: task 0 of Split MNIST (the bundled sample) is trained, then the training epoch of task 1 (where a
replay method replays, a regulariser penalises) is timed between Lightning's `on_train_epoch_start` and
`on_train_epoch_end` over 4 epochs (about 100 steps): the steps alone, without the task-boundary work (a Fisher, herding) or testing. Algorithms are
timed in interleaved rounds and medians are reported (a shared machine varies by tens of percent); the ratio to
Finetuning is taken per round. Prints a table and writes one JSON line per algorithm to `--out`.

    OMP_NUM_THREADS=1 python bench/bench_steps.py --repeat 5 --out bench/results/steps-cpu.jsonl
    python bench/bench_steps.py --device cuda --capture      # CUDA graphs for every algorithm that declares it can
"""
import argparse
import inspect
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from functools import partial

from clarena.loop import TrainClock, build, fit_on_data, fit_task, make_trainer, quiet_lightning
from clarena.train import compose_config

ALGORITHMS = {  # name: (experiment, overrides); CIL where the method is defined for it, else TIL
    "Finetuning": ("smnist_cil_finetuning", []), "ER": ("smnist_cil_finetuning", ["model/algorithm=er"]),
    "A-GEM": ("smnist_cil_finetuning", ["model/algorithm=agem"]), "DER": ("smnist_cil_finetuning", ["model/algorithm=der"]),
    "DER++": ("smnist_cil_finetuning", ["model/algorithm=derpp"]), "iCaRL": ("smnist_cil_finetuning", ["model/algorithm=icarl"]),
    "EWC": ("smnist_cil_finetuning", ["model/algorithm=ewc"]), "SI": ("smnist_cil_finetuning", ["model/algorithm=si"]),
    "MAS": ("smnist_cil_finetuning", ["model/algorithm=mas"]), "LwF": ("smnist_cil_finetuning", ["model/algorithm=lwf"]),
    "Finetuning (TIL)": ("smnist_til_finetuning", []), "HAT (TIL)": ("smnist_til_finetuning", ["model/algorithm=hat"]),
    "PackNet (TIL)": ("smnist_til_finetuning", ["model/algorithm=packnet"]),
    "GEM": ("smnist_cil_finetuning", ["model/algorithm=gem"]), "ER-ACE": ("smnist_cil_finetuning", ["model/algorithm=er_ace"]),
    "LUCIR": ("smnist_cil_finetuning", ["model/algorithm=lucir"]),
    "BiC": ("smnist_cil_finetuning", ["model/algorithm=bic"]), "X-DER": ("smnist_cil_finetuning", ["model/algorithm=xder"]),
    "GDumb": ("smnist_cil_finetuning", ["model/algorithm=gdumb"]),  # its stream steps only store; it trains at task ends (fit_on)
    # the architecture family (TIL); WSN and NISPA with Adam, as hat_protocol trains them; NISPA's rewiring phases run at task ends, untimed
    "AdaHAT (TIL)": ("smnist_til_finetuning", ["model/algorithm=adahat"]), "Fix (TIL)": ("smnist_til_finetuning", ["model/algorithm=fix"]),
    "WSN (TIL)": ("smnist_til_finetuning", ["model/algorithm=wsn", "model/optimizer=adam", "model.optimizer.lr=0.01", "+model.optimizer.fused=true"]),
    "NISPA (TIL)": ("smnist_til_finetuning", ["model/algorithm=nispa", "model/optimizer=adam", "model.optimizer.lr=0.01", "+model.optimizer.fused=true"]),
    "CBP (TIL)": ("smnist_til_finetuning", ["model/algorithm=cbp"]),
}


class EpochClock(L.Callback):
    "Times the training epochs of a fit, from the first epoch's start to the last one's end."
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 0: self.t0 = self._now(pl_module)
    def on_train_epoch_end(self, trainer, pl_module): self.seconds, self.steps = self._now(pl_module) - self.t0, trainer.global_step
    @staticmethod
    def _now(pl_module):  # on a GPU: once the queued kernels have run
        if pl_module.device.type == "cuda": torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()


def time_steps(experiment, overrides, device, batch, extra, tmp, epochs=4):
    cfg = compose_config(experiment, [*overrides, "data.num_tasks=2", f"data.batch_size={batch}", "data.val_size=0", "measure_fwt=false",
                                      "trainer.enable_progress_bar=false", f"trainer.max_epochs={epochs}", "paths.data_dir=/nonexistent",
                                      f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}", f"paths.output_dir={tmp}", *extra])
    L.seed_everything(0, verbose=False)
    dm, algo = build(cfg)
    dm.setup()
    algo.fitter = partial(fit_on_data, cfg, Path(tmp), TrainClock(), dm)  # what fit_on trains with (GDumb), as the task loop sets it
    for t in range(2):
        trainer = make_trainer(cfg, Path(tmp), t)
        clock = EpochClock(); trainer.callbacks.append(clock)
        if t == 0: dm.to(trainer.strategy.root_device); algo.to(trainer.strategy.root_device)
        dm.setup_task(t); algo.setup_task(t, dm.num_new_classes(t))
        fit_task(trainer, algo, dm)
    return 1000 * clock.seconds / clock.steps, clock.steps


def capture_option(name, capture: bool) -> list:
    "The override that captures `name`'s steps, if asked for and its class declares it can."
    from hydra.utils import get_class
    if not capture: return []
    cfg = compose_config(ALGORITHMS[name][0], [*ALGORITHMS[name][1], "paths.data_dir=/nonexistent"])
    if not get_class(cfg.model.algorithm._target_).capturable: return []
    has = "capturable" in inspect.signature(get_class(cfg.model.optimizer._target_)).parameters  # Adam's step counter on the device
    return ["speed.capture=true", *([f"{'' if 'capturable' in cfg.model.optimizer else '+'}model.optimizer.capturable=true"] if has else [])]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algo", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--capture", action="store_true", help="speed.capture=true for each algorithm whose class declares capturable")
    ap.add_argument("extra", nargs="*", help="overrides for every run (after --)")
    a = ap.parse_args()
    torch.set_num_threads(1) if a.device == "cpu" else None
    quiet_lightning()
    algos = ["Finetuning"] + [x for x in a.algo if x != "Finetuning"]
    if any(x.endswith("(TIL)") for x in algos) and "Finetuning (TIL)" not in algos: algos.append("Finetuning (TIL)")
    ms = {x: [] for x in algos}
    steps = {}
    for r in range(a.repeat):
        for x in algos:
            with tempfile.TemporaryDirectory() as tmp:
                m, steps[x] = time_steps(*ALGORITHMS[x], a.device, a.batch, [*a.extra, *capture_option(x, a.capture)], tmp)
                ms[x].append(m)
    rows = []
    for x in algos:
        base = "Finetuning (TIL)" if x.endswith("(TIL)") and "Finetuning (TIL)" in ms else "Finetuning"
        ratios = [m / b for m, b in zip(ms[x], ms[base])]
        rows.append(dict(algorithm=x, steps=steps[x], ms_per_step=statistics.median(ms[x]), ratio_to_finetuning=statistics.median(ratios),
                         ratio_range=[min(ratios), max(ratios)], capture=bool(capture_option(x, a.capture)), batch=a.batch, repeat=a.repeat, device=a.device,
                         machine=platform.node(), torch=torch.__version__, extra=a.extra))
    print(f"{'algorithm':18s} {'ms/step':>8s} {'x Finetuning':>13s}  (per round)")
    for r in rows: print(f"{r['algorithm']:18s} {r['ms_per_step']:8.3f} {r['ratio_to_finetuning']:13.2f}  ({r['ratio_range'][0]:.2f} to {r['ratio_range'][1]:.2f})"
                         + ("" if r["capture"] or not a.capture else "  (not captured)"))
    if a.out:
        with open(a.out, "a") as f:
            for r in rows: f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    sys.exit(main())
