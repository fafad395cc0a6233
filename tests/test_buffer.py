"""The replay buffer (clarena.algorithms.buffer) as the algorithms use it: inside a module whose device it follows, saved in a
checkpoint's state dict and loaded with weights_only=True, and (on a GPU) inserted and sampled inside a CUDA graph. Its
defining properties (uniform reservoir, vectorised = sequential algorithm R, equal shares) are tested in nbs/06f_buffer.ipynb."""
import io

import pytest
import torch
from torch import nn

from clarena.algorithms.buffer import ReplayBuffer


class Owner(nn.Module):
    "What an algorithm does with its buffer: state() under _extra_state."
    def __init__(self, size):
        super().__init__()
        self.lin, self.buffer = nn.Linear(2, 2), ReplayBuffer(size)
    def get_extra_state(self): return {"state": {"buffer": self.buffer.state()}}
    def set_extra_state(self, extra): self.buffer.load_state(extra["state"]["buffer"])


def fill(owner, steps=7, batch=5, seed=0):
    torch.manual_seed(seed)
    for t in range(steps): owner.buffer.add(torch.randn(batch, 3), torch.randint(10, (batch,)), t // 3, logits=torch.randn(batch, 2 + t // 3))


def test_state_dict_round_trip_and_continuation():
    a = Owner(16); fill(a)
    f = io.BytesIO(); torch.save(a.state_dict(), f); f.seek(0)
    b = Owner(16); b.load_state_dict(torch.load(f, weights_only=True))
    assert not b.buffer.empty and len(b.buffer) == 16 and int(b.buffer.seen) == 35
    for k in ("x", "y", "task_id", "logits"): assert torch.equal(getattr(a.buffer, k)[:16], getattr(b.buffer, k)[:16]), k
    torch.manual_seed(5); ra = a.buffer.sample(9); fill(a, 3, seed=1)
    torch.manual_seed(5); rb = b.buffer.sample(9); fill(b, 3, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(ra, rb))
    for k in ("x", "y", "task_id", "logits"): assert torch.equal(getattr(a.buffer, k)[:16], getattr(b.buffer, k)[:16]), k  # the spare row aside
    assert int(a.buffer.seen) == int(b.buffer.seen) == 50


def test_size_never_exceeded_and_state_holds_only_filled_rows():
    o = Owner(40); fill(o, steps=3)  # 15 of 40 rows filled
    s = o.buffer.state()
    assert len(o.buffer) == 15 and s["x"].shape[0] == 15 and s["x"].untyped_storage().nbytes() == 15 * 3 * 4
    fill(o, steps=50)
    assert len(o.buffer) == 40 and o.buffer.x.shape[0] == 41


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_buffer_follows_the_module_and_replays_from_a_cuda_graph():
    o = Owner(64); fill(o, steps=2); o.cuda()  # CPU rows, moved with the module
    assert o.buffer.x.device.type == "cuda" and o.buffer.seen.device.type == "cuda"
    o = Owner(64); o.cuda()
    x, y = torch.randn(32, 3, device="cuda"), torch.randint(10, (32,), device="cuda")
    o.buffer.add(x, y, 0)
    assert o.buffer.x.device.type == "cuda" and o.buffer.seen.device.type == "cuda"
    side = torch.cuda.Stream(); side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side): o.buffer.add(x, y, 0); o.buffer.sample(16)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        o.buffer.add(x, y, 0)
        r = o.buffer.sample(16)
    for _ in range(10): g.replay()  # capturing records the work without doing it: 1 + 1 + 10 insertions
    torch.cuda.synchronize()
    assert int(o.buffer.seen) == 32 * 12 and len(o.buffer) == 64 and r.x.shape == (16, 3)


def replay_methods():
    "Every replay method clarena ships (a subclass of ReplayMethod), found by walking the subclasses once the modules are imported."
    import importlib
    from clarena.algorithms.buffer import ReplayMethod
    for m in ("er", "agem", "der", "icarl", "gem", "er_ace", "gdumb"): importlib.import_module(f"clarena.algorithms.{m}")
    out, todo = [], [ReplayMethod]
    while todo:
        c = todo.pop(); todo += c.__subclasses__()
        if c is not ReplayMethod and c.__module__.startswith("clarena."): out.append(c)
    return sorted(out, key=lambda c: c.__name__)


def test_every_replay_method_gets_the_checks_from_the_base():
    "The shipped checks apply to every replay method without the method calling them: per-task batch norm, a replay batch larger than "
    "the buffer (issue #22), a buffer larger than the training set."
    from clarena.core import ConfigError
    from clarena.models.backbones import MLP, AlexNet
    from clarena.models.heads import HeadCIL, HeadTIL
    methods = replay_methods()
    assert {c.__name__ for c in methods} >= {"ER", "AGEM", "DER", "ICaRL", "GEM", "ERACE", "GDumb"}
    for cls in methods:
        label = cls.label or cls.__name__
        if cls.one_pass:
            with pytest.raises(ConfigError, match="per-task batch norm"): cls(AlexNet(batch_norm="per_task", max_tasks=2), HeadTIL(2048), optimizer=None)
        with pytest.raises(ConfigError, match=f"{label}'s replay_batch_size=11 is larger than the buffer"):  # BiC's replay memory: 9 of the 10
            cls(MLP(4, [8]), HeadCIL(8), optimizer=None, buffer_size=10, replay_batch_size=11)
        algo = cls(MLP(4, [8]), HeadCIL(8), optimizer=None, buffer_size=100)
        data = type("Data", (), dict(task_id=0, num_tasks=2, device=torch.device("cpu"), __len__=lambda self: 30))()
        with pytest.raises(ConfigError, match=f"{label}'s buffer_size.*=100 is larger than the training set"): algo.start_task(data)
