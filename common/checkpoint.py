"""Checkpoints that are never half-written and never run code when loaded.

A checkpoint is a plain dict: `model`, `arch` (what `common.models.build_model` needs), `optimizer`, `scheduler`,
`scaler`, `epoch`, `step`, `args`, `metrics`. It is written to a temporary file in the same folder, flushed to disk
and then renamed over the target (`os.replace` is atomic), so a process killed mid-save leaves the previous file whole.
Loading uses `torch.load(weights_only=True)`: tensors and plain containers only, no pickled code.
"""
import os
import pickle
import re
import tempfile
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, unsafe, or not the expected layout."""


def save_checkpoint(state: dict, path) -> Path:
    """Write `state` atomically to `path` (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path, map_location='cpu') -> dict:
    """Load with weights_only=True; a missing, corrupt or code-carrying file raises CheckpointError saying which."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint not found: {path}')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f'{path}: refused to load: it holds more than tensors and plain containers '
                              f'(weights_only=True). Only load files you trust. ({str(e).splitlines()[0]})') from None
    except Exception as e:  # truncated or foreign bytes fail deep inside the unpickler with assorted errors
        raise CheckpointError(f'{path}: not a readable PyTorch checkpoint ({str(e).splitlines()[0]})') from None


def strip_module_prefix(state_dict: dict) -> dict:
    """Drop the `module.` prefix DataParallel/DDP adds to every key (also nested `_orig_mod.` from torch.compile)."""
    return {re.sub(r'^(module\.|_orig_mod\.)+', '', k): v for k, v in state_dict.items()}


def extract_state_dict(obj) -> dict:
    """The model weights inside any of the layouts people pass around: ours ({'model': ...}), a training tar
    ({'state_dict': ...}), or a bare state dict."""
    if isinstance(obj, dict):
        for key in ('model', 'state_dict', 'model_state_dict', 'net'):
            if key in obj and isinstance(obj[key], dict):
                return strip_module_prefix(obj[key])
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return strip_module_prefix(obj)
    raise CheckpointError('no model weights found (expected a state dict, or a dict with "model" or "state_dict")')


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside DDP / torch.compile wrappers, whose state dict keys are the plain ones."""
    model = getattr(model, 'module', model)
    return getattr(model, '_orig_mod', model)


class CheckpointManager:
    """The run directory's checkpoints: last.pt every epoch, best.pt on a new best, epoch_<N>.pt every
    `save_every` epochs keeping the newest `keep`."""

    def __init__(self, out_dir, keep: int = 3, save_every: int = 1):
        self.out_dir = Path(out_dir)
        self.keep = keep
        self.save_every = save_every

    @property
    def last(self) -> Path:
        return self.out_dir / 'last.pt'

    @property
    def best(self) -> Path:
        return self.out_dir / 'best.pt'

    def save(self, state: dict, epoch: int, is_best: bool = False):
        save_checkpoint(state, self.last)
        if is_best:
            save_checkpoint(state, self.best)
        if self.save_every > 0 and epoch % self.save_every == 0 and self.keep > 0:
            save_checkpoint(state, self.out_dir / f'epoch_{epoch}.pt')
            self._prune()

    def _prune(self):
        numbered = sorted(self.out_dir.glob('epoch_*.pt'), key=lambda p: int(p.stem.split('_')[1]))
        for old in numbered[:-self.keep]:
            old.unlink(missing_ok=True)
