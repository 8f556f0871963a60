"""What every training loop shares: optimiser and LR schedule, data loaders, one guarded train step, the epoch
loop with checkpoints and resume, and the run directory's metrics.csv, plots and results.json.

A script builds its data, network, loss and optimiser, then hands them to `fit`, which reads like the loop it
replaces: for each epoch, train, maybe evaluate, log a row, save. `--resume` restores weights, optimiser, schedule,
scaler, epoch, step and the metrics history from last.pt, so a resumed run continues exactly where the saved one was.
"""
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from .checkpoint import CheckpointError, CheckpointManager, load_checkpoint, unwrap
from .runtime import Runtime, fail, worker_init

# ---------------------------------------------------------------- optimiser and schedule


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
    fail(f'--optimizer: unknown optimiser {name!r} (use sgd, adam or adamw)')


def lr_factor(step: int, *, iters_per_epoch: int, epochs: int, warmup_epochs: float = 0.0, schedule: str = 'step',
              milestones=(), gamma: float = 0.1, min_factor: float = 0.0, warmup_start: float = 0.0,
              per: str = 'iter') -> float:
    """Multiplier of the peak LR at optimiser step `step` (0-based): a linear warm-up, then 'step' decay by `gamma` at
    each milestone epoch, 'cosine' down to `min_factor`, or 'constant'. per='epoch' holds the factor for a whole
    epoch (the warm-up still moves every iteration, as the reference recipes do)."""
    epoch_pos = step / iters_per_epoch  # fractional epochs done
    warmup_iters = warmup_epochs * iters_per_epoch
    if step < warmup_iters:
        return warmup_start + (1.0 - warmup_start) * step / warmup_iters
    if per == 'epoch':
        epoch_pos = math.floor(epoch_pos)
    if schedule == 'step':
        return gamma ** sum(epoch_pos >= m for m in milestones)
    if schedule == 'cosine':
        span = max(epochs - warmup_epochs, 1e-8)
        progress = min(max((epoch_pos - warmup_epochs) / span, 0.0), 1.0)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == 'constant':
        return 1.0
    fail(f'--schedule: unknown LR schedule {schedule!r} (use step, cosine or constant)')


def build_scheduler(optimizer, **kwargs) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimiser step with `lr_factor(step, **kwargs)`; its state (the step count) goes
    into the checkpoint, so a resumed run continues the same curve."""
    lr_factor(0, **kwargs)  # reject a bad schedule name now, not after the first epoch
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, **kwargs))


# ---------------------------------------------------------------- data


def make_loader(dataset, *, batch_size: int, rt: Runtime, train: bool, workers: int, collate_fn=None,
                seed: int = 0) -> DataLoader:
    """A DataLoader whose order depends only on (seed, epoch): a DistributedSampler shards the data across ranks under
    torchrun and, with one process, still gives a reproducible shuffle that a resumed run repeats. `workers` is
    capped at the CPU cores this process may use: more workers than cores only fight the training for them."""
    workers = min(workers, len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1)
    sampler = DistributedSampler(dataset, num_replicas=rt.world_size, rank=rt.rank, shuffle=train, seed=seed,
                                 drop_last=train)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                      pin_memory=rt.device.type == 'cuda', drop_last=train, worker_init_fn=worker_init,
                      persistent_workers=workers > 0)


def to_device(obj, device, non_blocking=True):
    """Move tensors inside nested lists/tuples/dicts to `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    return obj


# ---------------------------------------------------------------- one epoch


class NonFiniteGuard:
    """Counts steps skipped because the loss was NaN or infinite; too many in a row stop the run."""

    def __init__(self, max_in_a_row: int = 20):
        self.max_in_a_row = max_in_a_row
        self.skipped = 0
        self.in_a_row = 0

    def check(self, finite: bool, rt: Runtime) -> bool:
        if finite:
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row >= self.max_in_a_row:
            rt.print(f'error: the loss was not finite for {self.in_a_row} steps in a row; stopping. '
                     f'Lower --lr, check the labels, or try --no-amp.', file=sys.stderr)
            raise SystemExit(1)
        return False


def train_one_epoch(*, rt: Runtime, model, loader, loss_fn, optimizer, scheduler, scaler, epoch: int, epochs: int,
                    guard: NonFiniteGuard, grad_clip: float = 0.0) -> dict:
    """One pass over `loader`. `loss_fn(model, images, targets) -> (loss, parts)` with `parts` a dict of scalars.
    Returns the mean of every part over the finite steps, plus images/s."""
    model.train()
    sums, count, images_seen = {}, 0, 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=f'epoch {epoch}/{epochs}', disable=not rt.is_main, leave=False, dynamic_ncols=True,
               file=sys.stdout, mininterval=0.5 if sys.stdout.isatty() else 30)  # a CI log gets a line per 30 s
    for images, targets in bar:
        images, targets = to_device(images, rt.device), to_device(targets, rt.device)
        if rt.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with rt.autocast():
            loss, parts = loss_fn(model, images, targets)
        finite = torch.isfinite(loss.detach())
        if rt.distributed:  # every rank must skip together, or DDP's gradient all-reduce would hang
            flag = finite.to(torch.int32)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            finite = flag.bool()
        if not guard.check(bool(finite), rt):
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()  # the schedule follows optimiser steps planned, so resume and skips stay aligned
            continue
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        count += 1
        images_seen += images.shape[0]
        for k, v in {'loss': loss, **parts}.items():  # summed on the device: no host sync per part
            sums[k] = sums.get(k, 0.0) + (v.detach().float() if torch.is_tensor(v) else v)
        if rt.is_main and count % 10 == 1:
            bar.set_postfix({k: f'{float(v) / count:.3f}' for k, v in sums.items()}, refresh=False)
    bar.close()
    means = {k: rt.all_reduce_mean(float(v) / max(count, 1)) for k, v in sums.items()}
    means['images_per_s'] = images_seen * rt.world_size / max(time.perf_counter() - start, 1e-9)
    return means


# ---------------------------------------------------------------- run directory: metrics, plots, results


def write_json(path, data: dict):
    """Atomic JSON write (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp')
    tmp.write_text(json.dumps(data, indent=2, default=float) + '\n')
    os.replace(tmp, path)


class MetricsHistory:
    """One row per epoch. The rows also live in every checkpoint, so a resumed run rewrites metrics.csv from the
    checkpoint it resumed: no duplicated rows from epochs after the save, none lost."""

    def __init__(self, out_dir, rows=None):
        self.out_dir = Path(out_dir)
        self.rows = list(rows or [])

    def append(self, row: dict):
        self.rows.append(row)

    def write(self):
        columns = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        tmp = self.out_dir / '.metrics.csv.tmp'
        with open(tmp, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.out_dir / 'metrics.csv')

    def plot(self, loss_keys=None, metric_keys=()):
        from .visualize import plot_history
        plot_history(self.rows, self.out_dir / 'loss.png', keys=loss_keys, title='training loss')
        present = [k for k in metric_keys if any(k in r for r in self.rows)]
        if present:
            plot_history(self.rows, self.out_dir / 'metrics.png', keys=present, title='evaluation')


# ---------------------------------------------------------------- the loop


def resume_state(path, *, model, optimizer, scheduler, scaler, rt: Runtime) -> dict:
    """Restore everything from `path` into the given objects; returns the checkpoint dict."""
    try:
        state = load_checkpoint(path, map_location=rt.device)
    except CheckpointError as e:
        fail(f'--resume: {e}')
    unwrap(model).load_state_dict(state['model'])
    optimizer.load_state_dict(state['optimizer'])
    scheduler.load_state_dict(state['scheduler'])
    if state.get('scaler'):
        scaler.load_state_dict(state['scaler'])
    return state


def fit(*, rt: Runtime, model, train_loader, loss_fn, optimizer, scheduler, scaler, arch: dict, args,
        evaluate=None, best_key: str | None = None, loss_keys=None, metric_keys=(), grad_clip: float = 0.0) -> dict:
    """Train for args.epochs with checkpoints every epoch; `evaluate(bare_model, epoch) -> dict` runs on rank 0
    every args.eval_every epochs and after the last. Returns the last metrics row."""
    out = Path(args.out)
    if rt.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / 'args.json', plain_args(args))
    ckpts = CheckpointManager(out, keep=args.keep, save_every=args.save_every)
    history = MetricsHistory(out)
    start_epoch, best = 1, None
    if args.resume:
        if not ckpts.last.is_file():
            fail(f'--resume: no checkpoint to resume at {ckpts.last}')
        state = resume_state(ckpts.last, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, rt=rt)
        start_epoch, best = state['epoch'] + 1, state.get('best')
        history.rows = list(state.get('metrics') or [])
        rt.print(f'resumed from {ckpts.last} at epoch {state["epoch"]}/{args.epochs}')
    guard = NonFiniteGuard()
    row = history.rows[-1] if history.rows else {}
    for epoch in range(start_epoch, args.epochs + 1):
        train_loader.sampler.set_epoch(epoch)
        started, lr = time.perf_counter(), optimizer.param_groups[0]['lr']  # the LR the epoch starts with
        try:
            stats = train_one_epoch(rt=rt, model=model, loader=train_loader, loss_fn=loss_fn, optimizer=optimizer,
                                    scheduler=scheduler, scaler=scaler, epoch=epoch, epochs=args.epochs, guard=guard,
                                    grad_clip=grad_clip)
        except torch.cuda.OutOfMemoryError:
            fail(f'CUDA out of memory at --batch-size {args.batch_size}: lower --batch-size (or --image-size)', 1)
        row = {'epoch': epoch, 'lr': lr, **stats, 'skipped_steps': guard.skipped}
        last_epoch = epoch == args.epochs
        if evaluate is not None and ((args.eval_every > 0 and epoch % args.eval_every == 0) or last_epoch):
            if rt.is_main:
                row.update(evaluate(unwrap(model), epoch))
            rt.barrier()
        row['epoch_time_s'] = time.perf_counter() - started
        history.append(row)
        is_best = best_key is not None and best_key in row and (best is None or row[best_key] > best)
        if is_best:
            best = row[best_key]
        if rt.is_main:
            state = {'model': unwrap(model).state_dict(), 'arch': arch, 'optimizer': optimizer.state_dict(),
                     'scheduler': scheduler.state_dict(), 'scaler': scaler.state_dict(), 'epoch': epoch,
                     'step': scheduler.last_epoch, 'args': plain_args(args), 'metrics': history.rows, 'best': best}
            ckpts.save(state, epoch, is_best=is_best)
            history.write()
            history.plot(loss_keys, metric_keys)
            rt.print(summary_line(row, args.epochs))
        rt.barrier()
    return row


def plain_args(args) -> dict:
    """The flags as JSON-able values (what args.json and the checkpoint hold; weights_only loading accepts them)."""
    return {k: v if isinstance(v, (int, float, str, bool, type(None), list, tuple)) else str(v)
            for k, v in vars(args).items()}


def summary_line(row: dict, epochs: int) -> str:
    skip = ('epoch', 'lr', 'images_per_s', 'epoch_time_s', 'skipped_steps')
    parts = ' '.join(f'{k} {v:.4f}' for k, v in row.items() if k not in skip and isinstance(v, (int, float)))
    extra = f' skipped {row["skipped_steps"]}' if row.get('skipped_steps') else ''
    return (f'epoch {row["epoch"]}/{epochs} {parts} lr {row["lr"]:.2e} '
            f'{row.get("images_per_s", 0):.1f} img/s {row.get("epoch_time_s", 0):.0f}s{extra}')
