"""How a training script steps its parameters: the optimiser, the learning-rate schedule, and the guard that skips
steps whose loss is not finite.

    optimizer = build_optimizer(model, 'sgd', lr=1e-3, momentum=0.9, weight_decay=5e-4)
    scheduler = build_scheduler(optimizer, iters_per_epoch=len(loader), epochs=250, warmup_epochs=5,
                                schedule='step', milestones=[190, 220], per='epoch')
    ...
    if not guard.check(loss, rt):   # NaN / inf: skip this step on every process
        ...

The scheduler is stepped once per optimiser step (skipped steps included), so its state in the checkpoint is the
step count and a resumed run continues the same curve.
"""
import math
import sys

import torch

from .runtime import Runtime, fail

OPTIMIZERS = ('sgd', 'adam', 'adamw')
SCHEDULES = ('step', 'cosine', 'constant')


def build_optimizer(model: torch.nn.Module, name: str, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4):
    """SGD (Nesterov off, as the reference recipes), Adam or AdamW over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    name = name.lower()
    if name == 'sgd':
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == 'adam':
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == 'adamw':
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    fail(f'--optimizer: unknown optimiser {name!r} (use {", ".join(OPTIMIZERS)})')


def lr_factor(step: int, *, iters_per_epoch: int, epochs: int, warmup_epochs: float = 0.0, schedule: str = 'step',
              milestones=(), gamma: float = 0.1, per: str = 'iter') -> float:
    """Multiplier of the peak LR at optimiser step `step` (0-based): a linear warm-up from 0, then 'step' (x gamma at
    each milestone), 'cosine' (down to 0 at the last epoch) or 'constant'. `milestones` are in epochs, or in
    iterations with iters_per_epoch=1. per='epoch' holds the factor for a whole epoch after the warm-up (the
    reference recipes change the LR at epoch boundaries; the warm-up still moves every iteration)."""
    position = step / iters_per_epoch  # epochs done, fractional
    warmup_iters = warmup_epochs * iters_per_epoch
    if step < warmup_iters:
        return step / warmup_iters
    if per == 'epoch':
        position = math.floor(position)
    if schedule == 'step':
        return gamma ** sum(position >= m for m in milestones)
    if schedule == 'cosine':
        progress = (position - warmup_epochs) / max(epochs - warmup_epochs, 1e-8)
        return 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    if schedule == 'constant':
        return 1.0
    fail(f'--schedule: unknown LR schedule {schedule!r} (use {", ".join(SCHEDULES)})')


def build_scheduler(optimizer, **kwargs) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimiser step with `lr_factor(step, **kwargs)`."""
    lr_factor(0, **kwargs)  # a bad schedule name stops now, not after the first epoch
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, **kwargs))


class NonFiniteGuard:
    """`guard.check(loss, rt)` is False when the loss is NaN or infinite: the script skips that step. Under DDP every
    process skips together (or the gradient all-reduce would hang). `max_in_a_row` skips in a row stop the run."""

    def __init__(self, max_in_a_row: int = 20):
        self.max_in_a_row = max_in_a_row
        self.skipped = 0
        self.in_a_row = 0

    def check(self, loss: torch.Tensor, rt: Runtime) -> bool:
        finite = torch.isfinite(loss.detach())
        if rt.distributed:
            flag = finite.to(torch.int32)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            finite = flag.bool()
        if bool(finite):
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row >= self.max_in_a_row:
            rt.print(f'error: the loss was not finite for {self.in_a_row} steps in a row; stopping. '
                     f'Lower --lr, check the labels, or try --no-amp.', file=sys.stderr)
            raise SystemExit(1)
        return False
