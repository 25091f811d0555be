"""torch.compile (inductor) of the norm -> ReLU -> pool block vs the fused op, training step.

The ConvNet-3 training step (CIFAR-10 shape, batch 256, one thread) three ways, timed in
turn for ROUNDS rounds: the module with the fused op, the plain modules, and the plain block
``group_norm -> relu -> avg_pool2d`` compiled by ``torch.compile`` (inductor, needs a C++
compiler). Then the compiled block's float64 gradients against the plain one, and whether a
double backward (the unrolled student's ``create_graph``) goes through it.

    python benchmarks/compile_block.py 5      # RESULTS.md section 14
"""

import copy
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import datadistill  # noqa: F401  (its allocator setting, as every other benchmark)
from datadistill.models import create_model

torch.set_num_threads(1)
torch.manual_seed(0)
base = create_model("convnet", 3, 10, 32, width=128)
x, y = torch.randn(256, 3, 32, 32), torch.randint(0, 10, (256,))


def block(z, w, b):
    return F.avg_pool2d(F.relu(F.group_norm(z, z.shape[1], w, b, 1e-5)), 2)


cblock = torch.compile(block, dynamic=False)


class Compiled(torch.nn.Module):
    """The ConvNet's convolutions and classifier with the compiled block between them."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        n = self.net
        for d in range(1, n.depth + 1):
            x = getattr(n, f"conv{d}")(x)
            norm = getattr(n, f"norm{d}")
            x = cblock(x, norm.weight, norm.bias)
        return n.fc(x.flatten(1))


fused = copy.deepcopy(base)
plain = copy.deepcopy(base)
plain.fused = False
comp = Compiled(copy.deepcopy(base))
nets = {"fused": fused, "modules": plain, "compiled": comp}
opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        for k, m in nets.items()}


def step(k):
    opts[k].zero_grad(set_to_none=True)
    F.cross_entropy(nets[k](x), y).backward()
    opts[k].step()


t0 = time.perf_counter()
step("compiled")
print("compile + first step s", time.perf_counter() - t0, flush=True)
for k in nets:
    step(k)
times = {k: [] for k in nets}
for _ in range(int(sys.argv[1])):
    for k in nets:
        t0 = time.perf_counter()
        step(k)
        times[k].append(time.perf_counter() - t0)
for k, v in times.items():
    print(k, "median s", round(statistics.median(v), 3), [round(t, 3) for t in v])
# exactness of the compiled block vs modules (float64)
f64 = {"dtype": torch.float64, "requires_grad": True}
z, w, b = torch.randn(4, 8, 8, 8, **f64), torch.randn(8, **f64), torch.randn(8, **f64)
c64 = torch.compile(block, dynamic=False)
gc = torch.autograd.grad((c64(z, w, b) ** 2).sum(), [z, w, b])
gr = torch.autograd.grad((block(z, w, b) ** 2).sum(), [z, w, b])
print("compiled f64 grad max diff",
      max((p - q).abs().max().item() for p, q in zip(gc, gr, strict=True)))
try:
    g = torch.autograd.grad((c64(z, w, b) ** 3).sum(), [z], create_graph=True)[0]
    torch.autograd.grad(g.pow(2).sum(), [z])
    print("double backward: ok")
except Exception as e:
    print("double backward:", type(e).__name__, str(e).splitlines()[0][:200])
