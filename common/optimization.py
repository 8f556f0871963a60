"""How a training script steps its parameters: the optimiser, the learning-rate schedule, and the guard that skips
steps whose loss is not finite.

    optimizer = build_optimizer(model, 'sgd', lr=1e-3, momentum=0.9, weight_decay=5e-4)
    scheduler = epoch_schedule(optimizer, iters_per_epoch=len(loader), epochs=250, warmup_epochs=5,
                               schedule='step', milestones=[190, 220])
    # or, for a run counted in iterations: iteration_schedule(optimizer, iterations=600_000, milestones=[...])
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


def lr_factor(position: float, *, total: float, warmup: float = 0.0, schedule: str = 'step', milestones=(),
              gamma: float = 0.1) -> float:
    """Multiplier of the peak LR at `position` (in the schedule's unit: iterations, or epochs done): a linear
    warm-up from 0 over `warmup`, then 'step' (x gamma at each milestone), 'cosine' (down to 0 at `total`) or
    'constant'."""
    if position < warmup:
        return position / warmup
    if schedule == 'step':
        return gamma ** sum(position >= m for m in milestones)
    if schedule == 'cosine':
        progress = (position - warmup) / max(total - warmup, 1e-8)
        return 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    if schedule == 'constant':
        return 1.0
    fail(f'--schedule: unknown LR schedule {schedule!r} (use {", ".join(SCHEDULES)})')


def epoch_schedule(optimizer, *, iters_per_epoch: int, epochs: int, warmup_epochs: float = 0.0,
                   schedule: str = 'step', milestones=(), gamma: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """A schedule in epochs (milestones are epochs), stepped once per optimiser step: the warm-up moves every
    iteration, after it the LR changes at epoch boundaries, as the reference recipes change it."""
    def factor(step: int) -> float:
        epochs_done = step / iters_per_epoch
        if epochs_done >= warmup_epochs:
            epochs_done = math.floor(epochs_done)
        return lr_factor(epochs_done, total=epochs, warmup=warmup_epochs, schedule=schedule, milestones=milestones,
                         gamma=gamma)
    factor(0)  # a bad schedule name stops now, not after the first epoch
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def iteration_schedule(optimizer, *, iterations: int, warmup_iterations: int = 0, schedule: str = 'step',
                       milestones=(), gamma: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """A schedule in iterations (milestones are iterations), stepped once per optimiser step."""
    def factor(step: int) -> float:
        return lr_factor(step, total=iterations, warmup=warmup_iterations, schedule=schedule, milestones=milestones,
                         gamma=gamma)
    factor(0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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
