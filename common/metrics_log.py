"""What a training run records in its run directory, and what it shows while it runs: metrics.csv (one row per
epoch), loss.png and metrics.png, args.json and results.json (atomic JSON), the progress bar, the running means of
the loss parts, and the epoch's summary line.

The rows also live in every checkpoint, so a resumed run rewrites metrics.csv from the checkpoint it resumed: no
rows duplicated from epochs after the save, none lost.
"""
import csv
import json
import os
import sys
from pathlib import Path

import torch
from tqdm import tqdm


def write_json(path, data: dict):
    """Atomic JSON write (temp file + rename): a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp')
    tmp.write_text(json.dumps(data, indent=2, default=float) + '\n')
    os.replace(tmp, path)


def plain_args(args) -> dict:
    """The flags as JSON-able values: what args.json and the checkpoint hold (weights_only loading accepts them)."""
    return {k: v if isinstance(v, (int, float, str, bool, type(None), list, tuple)) else str(v)
            for k, v in vars(args).items()}


class MetricsLog:
    """The per-epoch rows of a run: `append(row)`, then `write()` (metrics.csv) and `plot(...)` (PNG curves)."""

    def __init__(self, out_dir, rows=None):
        self.out_dir = Path(out_dir)
        self.rows = list(rows or [])

    def append(self, row: dict):
        self.rows.append(row)

    def write(self):
        columns = list(dict.fromkeys(k for row in self.rows for k in row))
        tmp = self.out_dir / '.metrics.csv.tmp'
        with open(tmp, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.out_dir / 'metrics.csv')

    def plot(self, loss_keys=('loss',), metric_keys=()):
        """loss.png with `loss_keys` against the epoch; metrics.png with the `metric_keys` evaluated so far."""
        from .visualize import plot_history
        plot_history(self.rows, self.out_dir / 'loss.png', keys=list(loss_keys), title='training loss')
        present = [k for k in metric_keys if any(k in r for r in self.rows)]
        if present:
            plot_history(self.rows, self.out_dir / 'metrics.png', keys=present, title='evaluation')


class LossMeter:
    """Running means of the loss and its parts over an epoch's finite steps. Sums stay on the device (no host sync
    per step); `means(rt)` averages them over the processes too."""

    def __init__(self):
        self.sums, self.steps, self.samples = {}, 0, 0

    def add(self, loss: torch.Tensor, parts: dict, batch_size: int = 0):
        self.steps += 1
        self.samples += batch_size
        for key, value in {'loss': loss, **parts}.items():
            value = value.detach().float() if torch.is_tensor(value) else float(value)
            self.sums[key] = self.sums.get(key, 0.0) + value

    def postfix(self) -> dict:
        """For the progress bar: refreshed every 10 steps, so the host waits for the device rarely."""
        if self.steps % 10 != 1:
            return {}
        return {k: f'{float(v) / self.steps:.3f}' for k, v in self.sums.items()}

    def means(self, rt) -> dict:
        return {k: rt.all_reduce_mean(float(v) / max(self.steps, 1)) for k, v in self.sums.items()}


def progress_bar(iterable, desc: str, rt, **options) -> tqdm:
    """One bar per epoch on the main process (or one for a run counted in iterations: iterable None, `total` and
    `initial` in options); in a log file (not a terminal) one line per 30 s instead of a redraw per step."""
    return tqdm(iterable, desc=desc, disable=not rt.is_main, leave=False, dynamic_ncols=True, file=sys.stdout,
                mininterval=0.5 if sys.stdout.isatty() else 30, **options)


def summary_line(row: dict, epochs: int) -> str:
    """`epoch 3/30 loss 1.2345 ... easy 0.8123 lr 1.00e-02 35.1 img/s 12s` from an epoch's metrics row."""
    skip = ('epoch', 'lr', 'images_per_s', 'epoch_time_s', 'skipped_steps')
    parts = ' '.join(f'{k} {v:.4f}' for k, v in row.items() if k not in skip and isinstance(v, (int, float)))
    extra = f' skipped {row["skipped_steps"]}' if row.get('skipped_steps') else ''
    return (f'epoch {row["epoch"]}/{epochs} {parts} lr {row["lr"]:.2e} '
            f'{row.get("images_per_s", 0):.1f} img/s {row.get("epoch_time_s", 0):.0f}s{extra}')
