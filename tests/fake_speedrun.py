"""A stand-in for hiverge's cifar10_speedrun.py, shaped as benchmarks/op_count.py reads it: a module-level
`Muon` (with `step_count` and `last_norm_step`), `CifarLoader`, `CifarNet` (`reset`, `init_whiten`,
`forward(x, whiten_bias_grad)`), and `main(run, model)` that builds its loaders and optimisers, times
with CUDA events and trains with a compiled forward step. The net is tiny and the Muon plain (momentum
left out, a rescaling every other step), so the count runs in seconds; the real script's counts are
what op_count reports with --peer pointing at it."""
from math import ceil

import torch
import torch.nn.functional as F
from torch import nn


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr=0.1, total_train_steps=1):
        super().__init__(params, dict(lr=lr))
        self.step_count, self.last_norm_step, self.total_train_steps = 0, 0, total_train_steps

    @torch.no_grad()
    def step(self):
        self.step_count += 1
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if self.step_count - self.last_norm_step >= 2:
            self.last_norm_step = self.step_count
            norms = torch._foreach_norm(params)
            torch._foreach_mul_(params, [(len(p) ** 0.5 / (n + 1e-7)).to(p.dtype) for p, n in zip(params, norms)])
        torch._foreach_add_(params, [p.grad for p in params], alpha=-self.param_groups[0]["lr"])


class CifarLoader:   # op_count replaces it with its own batches
    def __init__(self, path, train=True, batch_size=500, aug=None):
        raise RuntimeError("the stand-in has no data of its own")


class CifarNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.whiten = nn.Conv2d(3, 24, 2, bias=True)
        self.whiten.weight.requires_grad = False
        self.conv = nn.Conv2d(24, 16, 3, padding=1, bias=False)
        self.head = nn.Linear(16, 10, bias=False)
        for mod in self.modules():
            mod.half()

    def reset(self):
        for m in self.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def init_whiten(self, train_images):
        self.whiten.weight.data.normal_()

    def forward(self, x, whiten_bias_grad=True):
        b = self.whiten.bias
        x = F.gelu(F.conv2d(x, self.whiten.weight, b if whiten_bias_grad else b.detach()))
        x = F.silu(self.conv(x)).amax((2, 3))
        return self.head(x)


def main(run, model):
    train_loader = CifarLoader("cifar10", train=True, batch_size=16)
    total_train_steps = ceil(7.59 * len(train_loader))
    whiten_bias_train_steps = ceil(0.19 * len(train_loader))
    model.reset()
    sgd = torch.optim.SGD([dict(params=[model.whiten.bias], lr=0.05), dict(params=[model.head.weight], lr=0.5)],
                          momentum=0.8, nesterov=True, fused=True)
    muon = Muon([model.conv.weight], lr=0.2, total_train_steps=total_train_steps)
    starter = torch.cuda.Event(enable_timing=True)
    starter.record()
    with torch.no_grad():
        model.init_whiten(train_loader.normalize(train_loader.images[:960]))

    @torch.compile(mode="max-autotune", fullgraph=True)
    def forward_step(inputs, labels, whiten_bias_grad):
        return F.cross_entropy(model(inputs, whiten_bias_grad=whiten_bias_grad), labels, reduction="sum")

    step = 0
    for epoch in range(ceil(total_train_steps / len(train_loader))):
        model.train()
        for inputs, labels in train_loader:
            loss = forward_step(inputs, labels, step < whiten_bias_train_steps)
            loss.backward()
            for opt in (sgd, muon):
                opt.step()
                opt.zero_grad(set_to_none=True)
            step += 1
            if step >= total_train_steps:
                return


if __name__ == "__main__":
    main(1, CifarNet())
