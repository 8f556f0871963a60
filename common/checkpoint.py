"""Checkpoints that are never half-written and never run code when loaded.

A checkpoint is a plain dict: `model`, `arch` (what `common.models.build_model` needs), `optimizer`, `scheduler`,
`scaler`, `epoch`, `step`, `args`, `metrics`. It is written to a temporary file in the same folder, flushed to disk
and then renamed over the target (`os.replace` is atomic), so a process killed mid-save leaves the previous file whole.
Loading uses `torch.load(weights_only=True)`: tensors and plain containers only, no pickled code.
"""
import hashlib
import os
import pickle
import random
import re
import tempfile
import zipfile
from pathlib import Path

import numpy as np
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


# the first bytes of files people pass by mistake, for the message that says what a file is instead
_FOREIGN_MAGIC = ((b'\xff\xd8\xff', 'a JPEG image'), (b'\x89PNG', 'a PNG image'), (b'GIF8', 'a GIF image'),
                  (b'BM', 'a BMP image'), (b'\x1f\x8b', 'a gzip archive'), (b'\x89HDF', 'an HDF5 (Keras) file'),
                  (b'\x08', 'an ONNX model or another protobuf file'), (b'{', 'a JSON or text file'))
_ZIP_MAGIC = b'PK\x03\x04'  # torch.save's format since PyTorch 1.6
_PICKLE_PROTOCOL = b'\x80'    # the legacy format (Pytorch_Retinaface's .pth files): a pickle stream


def _not_a_checkpoint(path: Path, head: bytes) -> str | None:
    """Why the file cannot be a PyTorch checkpoint judging by its first bytes, or None when it may be one."""
    if not head:
        return 'is empty (0 bytes), not a PyTorch checkpoint'
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):  # the archive's index sits at its end: a cut-short file has none
            return 'is truncated or damaged: a zip archive without its end (a PyTorch checkpoint cut short?)'
        return None
    if head[:1] == _PICKLE_PROTOCOL and head[1:2] in (b'\x02', b'\x03', b'\x04', b'\x05'):
        return None
    what = next((name for magic, name in _FOREIGN_MAGIC if head.startswith(magic)), None)
    if what is None and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        what = 'a text file'
    return f'is not a PyTorch checkpoint ({what or f"unknown format, first bytes {head[:4].hex()}"})'


def load_checkpoint(path, map_location='cpu') -> dict:
    """torch.load with weights_only=True: tensors and plain containers, never code. A file that is missing, empty,
    cut short, not a checkpoint at all, or holding pickled objects raises CheckpointError with one line saying which
    (a script prints it and exits 2)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'{path}: not found')
    with open(path, 'rb') as f:
        head = f.read(16)
    problem = _not_a_checkpoint(path, head)
    if problem:
        raise CheckpointError(f'{path}: {problem}')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = _unsafe_globals(path, e)
        if found:
            raise CheckpointError(f'{path}: holds a pickled Python object ({", ".join(found[:3])}) besides tensors; '
                                  f'refused, because loading it would run code from the file (weights_only=True). '
                                  f'If you trust the file, load it once with weights_only=False and re-save its state '
                                  f'dict') from None
        raise CheckpointError(f'{path}: truncated or damaged PyTorch checkpoint ({_first_line(e)})') from None
    except Exception as e:  # cut-short or damaged bytes fail deep inside the unpickler with assorted errors
        raise CheckpointError(f'{path}: truncated or damaged PyTorch checkpoint ({_first_line(e)})') from None


def _unsafe_globals(path: Path, error: Exception) -> list[str]:
    """The Python objects (module.name) the file would import when unpickled; [] for a damaged file. For a zip
    checkpoint torch lists them from the pickle's opcodes without running them; for a legacy file, the name in
    torch's error (its wording has changed across releases: 'Unsupported global: GLOBAL x', 'unsupported GLOBAL x')."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # a legacy (non-zip) file, or bytes the scan cannot parse
        return re.findall(r'GLOBAL ([\w.]+)', str(error))


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f'{type(error).__name__}: {lines[0]}' if lines else type(error).__name__


def file_sha256(path) -> str:
    """The hex SHA-256 of a file's bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def strip_module_prefix(state_dict: dict) -> dict:
    """Drop the `module.` prefix DataParallel/DDP adds to every key (also nested `_orig_mod.` from torch.compile)."""
    return {re.sub(r'^(module\.|_orig_mod\.)+', '', k): v for k, v in state_dict.items()}


def extract_state_dict(obj) -> dict:
    """The model weights inside any of the layouts people pass around: ours ({'model': ...}), a training tar
    ({'state_dict': ...}), the released MobileFaceNet's ({'epoch', 'net_state_dict'}), or a bare state dict."""
    if isinstance(obj, dict):
        for key in ('model', 'state_dict', 'model_state_dict', 'net', 'net_state_dict'):
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
    `save_every` epochs keeping the newest `keep` (`prefix='iter'` names them iter_<N>.pt, for runs counted in
    iterations)."""

    def __init__(self, out_dir, keep: int = 3, save_every: int = 1, prefix: str = 'epoch'):
        self.out_dir = Path(out_dir)
        self.keep = keep
        self.save_every = save_every
        self.prefix = prefix

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
            save_checkpoint(state, self.out_dir / f'{self.prefix}_{epoch}.pt')
            self._prune()

    def _prune(self):
        numbered = sorted(self.out_dir.glob(f'{self.prefix}_*.pt'), key=lambda p: int(p.stem.split('_')[1]))
        for old in numbered[:-self.keep]:
            old.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------- resume


def rng_states() -> dict:
    """Every random generator a training run draws from (torch CPU and CUDA, NumPy's global, Python's), as plain
    values a weights_only checkpoint holds. Saved with each checkpoint and restored by `resume_training`, so a
    resumed run draws what the uninterrupted run would have drawn (DataLoader worker seeds included)."""
    numpy_state = np.random.get_state()
    return {'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            'numpy': [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
            'python': [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]]}


def restore_rng_states(states: dict):
    torch.set_rng_state(states['torch'])
    if states.get('cuda') and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])
    name, keys, *rest = states['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = states['python']
    random.setstate((version, tuple(internal), gauss))


def resume_training(path, *, model, optimizer, scheduler, scaler, device='cpu') -> dict:
    """Restore a run from its checkpoint: weights (into the bare model inside DDP), optimiser, LR schedule, loss
    scaler and the random generators. Returns the checkpoint dict (epoch, best, metrics, ...). Raises
    CheckpointError when the file is missing, unreadable, or from another network."""
    state = load_checkpoint(path, map_location=device)
    missing = [key for key in ('model', 'optimizer', 'scheduler', 'epoch') if key not in state]
    if missing:
        raise CheckpointError(f'{path}: not a training checkpoint of ours (no {", ".join(missing)})')
    try:
        unwrap(model).load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f'{path}: saved for another network or optimiser ({_first_line(e)}); '
                              f'the run was made with arch {state.get("arch")}') from None
    scheduler.load_state_dict(state['scheduler'])
    if state.get('scaler'):
        scaler.load_state_dict(state['scaler'])
    if state.get('rng'):
        restore_rng_states(state['rng'])
    return state
