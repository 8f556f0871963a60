"""Where and how a script runs: device choice, seeding, torchrun/DDP set-up, rank-0 printing, mixed precision.

Every training script calls `setup(args)` once and gets a `Runtime` that answers the questions its loop asks:
which device, am I the process that prints and saves, how many processes share the work, which precision.
`add_shared_flags` adds the flags every training script has.
"""
import argparse
import contextlib
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.distributed as dist


def fail(message: str, status: int = 2):
    """Stop with one clear line and no traceback (bad path, bad flag, impossible request)."""
    print(f'error: {message}', file=sys.stderr)
    raise SystemExit(status)


def require_path(path, flag: str, kind: str = 'path') -> Path:
    """The path a flag names, or exit 2 with one line naming both."""
    path = Path(path)
    if not path.exists():
        fail(f'{flag}: {kind} not found: {path}')
    return path


def select_device(name: str = 'auto') -> torch.device:
    """`auto` picks cuda, then mps, then cpu; `cuda:N`, `cuda`, `mps` and `cpu` are taken as asked (and checked)."""
    name = (name or 'auto').lower()
    if name == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))
        if getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available():
            return torch.device('mps')
        return torch.device('cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        fail(f'--device: unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)')
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            fail(f'--device {name}: CUDA is not available on this machine (try --device cpu)')
        index = device.index if device.index is not None else int(os.environ.get('LOCAL_RANK', 0))
        if index >= torch.cuda.device_count():
            fail(f'--device {name}: only {torch.cuda.device_count()} CUDA device(s) present')
        return torch.device('cuda', index)
    if device.type == 'mps' and not torch.backends.mps.is_available():
        fail(f'--device {name}: MPS is not available on this machine (try --device cpu)')
    if device.type not in ('cpu', 'cuda', 'mps'):
        fail(f'--device: unsupported device type {device.type!r}')
    return device


def seed_everything(seed: int, rank: int = 0):
    """Seed Python, NumPy and torch; each rank gets its own stream so augmentations differ across processes."""
    seed = seed + rank
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def worker_init(worker_id: int):
    """DataLoader worker seeding: NumPy does not reseed in forked workers, so derive it from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    # One OpenCV thread per worker: the workers already run in parallel, and OpenCV's own thread pool in every
    # worker would fight the training process for the cores (seen here: 4x slower steps on a 2-core machine).
    cv2.setNumThreads(1)


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    amp_dtype: torch.dtype | None = None  # None: full precision
    channels_last: bool = False           # NHWC layout for the model and its input batches

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout input batches go to the device in: the model's (channels_last when set)."""
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def print(self, *args, **kwargs):
        if self.is_main:
            print(*args, **kwargs, flush=True)

    def autocast(self):
        """Mixed precision for the forward pass when --amp is on and the device supports it."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """float16 needs loss scaling; bfloat16 and full precision do not (the scaler is then a no-op)."""
        enabled = self.amp_dtype == torch.float16
        return torch.amp.GradScaler(self.device.type if enabled else 'cpu', enabled=enabled)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move to the device (channels_last if set) and, under torchrun, wrap in DistributedDataParallel (BatchNorm
        synchronised)."""
        model = model.to(self.device, memory_format=torch.channels_last if self.channels_last else None)
        if not self.distributed:
            return model
        if self.device.type == 'cuda':
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return torch.nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index])
        return torch.nn.parallel.DistributedDataParallel(model)

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def all_reduce_mean(self, value: float) -> float:
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.item() / self.world_size

    def close(self):
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def amp_dtype_for(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 where the GPU supports it (no loss scaling needed), else fp16 on CUDA; CPU and MPS train in fp32."""
    if not enabled or device.type != 'cuda':
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def setup(args) -> Runtime:
    """Device, DDP process group (under torchrun), seeds and precision from the shared flags."""
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    rank = int(os.environ.get('RANK', 0))
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    device = select_device(args.device)
    if world_size > 1:
        if device.type == 'cuda':
            device = torch.device('cuda', local_rank)
            torch.cuda.set_device(device)
        backend = 'nccl' if device.type == 'cuda' else 'gloo'
        dist.init_process_group(backend=backend)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    seed_everything(args.seed, rank)
    channels_last = getattr(args, 'channels_last', None)
    return Runtime(device=device, rank=rank, local_rank=local_rank, world_size=world_size,
                   amp_dtype=amp_dtype_for(device, getattr(args, 'amp', False)),
                   channels_last=device.type == 'cpu' if channels_last is None else channels_last)


def add_shared_flags(parser: argparse.ArgumentParser, *, data_root: str, out: str, epochs: int, batch_size: int,
                     lr: float | None, workers: int = 4, eval_every: int = 1, save_every: int = 1, keep: int = 3,
                     unit: str = 'epochs', lr_help: str = 'peak learning rate'):
    """The flags every training script has (DESIGN.md), with the script's own defaults: --data-root --workers
    --pretrained --epochs --batch-size --lr --amp --channels-last --out --exist-ok --device --resume --seed
    --eval-every --save-every --keep. Everything else a script declares itself. `unit` is what the loop counts
    ('epochs', or 'iterations' for a script whose --epochs is an alternative to its --iterations). Returns the
    argument groups (data, model, optimisation, run) so the script adds its own flags where a reader expects them."""
    groups = {name: parser.add_argument_group(name) for name in ('data', 'model', 'optimisation', 'run')}
    g = groups['data']
    g.add_argument('--data-root', default=data_root, help='dataset folder (default: %(default)s)')
    g.add_argument('--workers', type=int, default=workers, help='DataLoader worker processes per rank; 0 loads in '
                   'the main process (use it if workers fail on Windows)')
    g = groups['model']
    g.add_argument('--pretrained', default=None, help='weights to start from (checkpoint or foreign format)')
    g = groups['optimisation']
    g.add_argument('--epochs', type=int, default=epochs, help='passes over the training set' if unit == 'epochs' else
                   'passes over the training set to run instead of --iterations (0: use --iterations)')
    g.add_argument('--batch-size', type=int, default=batch_size, help='images per step on each process')
    g.add_argument('--lr', type=float, default=lr, help=lr_help)
    g.add_argument('--amp', action=argparse.BooleanOptionalAction, default=True,
                   help='mixed precision on CUDA (bf16 where supported, else fp16); ignored on CPU')
    g.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=None,
                   help='NHWC memory layout for the network (default: on for the CPU, where training measured '
                        '1.08x (RetinaFace) to 1.36x (CenterFace) faster; off elsewhere)')
    g = groups['run']
    g.add_argument('--out', default=out, help='run directory: checkpoints, metrics.csv, plots, results.json '
                   '(default: %(default)s). A run, or --evaluate, never writes over an earlier one: when OUT holds a '
                   'run (last.pt, best.pt, metrics.csv or results.json) or a running run uses it, it writes to the '
                   'next free name, OUT2, OUT3, ... (OUT-2, OUT-3 after a final digit); its first line says where')
    g.add_argument('--exist-ok', action='store_true', help='write into OUT as given even when it holds a run (over '
                   'its files)')
    g.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:N or mps')
    g.add_argument('--resume', action='store_true', help='continue the run in OUT (as given) from OUT/last.pt '
                   '(weights, optimiser, schedule, epoch, metrics)')
    g.add_argument('--seed', type=int, default=0)
    g.add_argument('--eval-every', type=int, default=eval_every, help=f'evaluate every N {unit} (0: only at the end)')
    name = 'epoch' if unit == 'epochs' else 'iter'
    g.add_argument('--save-every', type=int, default=save_every, help=f'write {name}_<N>.pt every N {unit}')
    g.add_argument('--keep', type=int, default=keep, help=f'how many {name}_<N>.pt checkpoints to keep')
    return groups
