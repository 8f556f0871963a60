"""The directory a run writes to, chosen so that a new run never overwrites an earlier one.

`--out D` (the script's default, e.g. runs/retinaface, or the user's):
  - D does not exist, is empty, or holds nothing of a run: the run writes to D.
  - D holds a run or an evaluation (last.pt, best.pt, metrics.csv or results.json), or a live run is writing to it:
    the run writes to the next free name, D2, D3, ... (as yolov5's runs/train/exp, exp2, ...). After a name that
    ends in a digit a '-' comes first (runs/voc07 -> runs/voc07-2, voc07-3), so the count never runs into the name;
    names are never parsed (runs/retinaface2 -> runs/retinaface2-2, not runs/retinaface3).
  - --exist-ok: D as given, whatever it holds (the run writes over what it writes again).
  - --resume: D as given (it holds the run to continue).

A run claims its directory by holding an exclusive lock on the file D/.run.lock (flock, non-blocking) for as long as
it lives; the kernel drops the lock when the process ends, however it ends. Of several runs started at the same
moment with the same --out exactly one gets the lock, and the others move on to the next name. A run still in its
first epoch (args.json only, no checkpoint yet) holds its lock and is skipped; one that died before its first
checkpoint, or stopped on bad input, holds none, and its directory is used again (nothing of a run is in it).
Under torchrun rank 0 alone claims, and the other ranks learn the path from it (a broadcast after the process group
is up).
"""
import os
import socket
import time
from itertools import count
from pathlib import Path

import torch.distributed as dist

from .runtime import fail

try:
    import fcntl
except ImportError:  # Windows: a byte-range lock, also dropped when the process ends
    fcntl = None
    import msvcrt

LOCK = '.run.lock'
RUN_FILES = ('last.pt', 'best.pt', 'metrics.csv', 'results.json')  # what a training run or an evaluation leaves
_held_locks = []  # open lock files of the directories this process claimed: closing one would drop its lock


def claim_run_dir(out, *, resume: bool = False, exist_ok: bool = False, rt=None) -> tuple[Path, str]:
    """The directory this run writes to, and the line that says so (the first line a script prints).

    `rt` is the Runtime (common.runtime.setup): under torchrun rank 0 claims and broadcasts the path; without it,
    or with one process, this process claims. A path that cannot be a directory (a file, no permission) exits 2
    with one line."""
    if rt is None or not rt.distributed:
        return _choose(Path(out), resume, exist_ok)
    message = [None, None]
    if rt.is_main:
        try:
            path, line = _choose(Path(out), resume, exist_ok)
            message = [str(path), line]
        except SystemExit:  # fail() has printed why; the other ranks must not wait for a path forever
            dist.broadcast_object_list(message, src=0)
            raise
    dist.broadcast_object_list(message, src=0)
    path, line = message
    if path is None:
        raise SystemExit(2)
    return Path(path), line


def _choose(requested: Path, resume: bool, exist_ok: bool) -> tuple[Path, str]:
    if requested.exists() and not requested.is_dir():
        fail(f'--out {requested}: is a file, not a directory')
    if resume:  # the script says so when OUT/last.pt is missing
        _make(requested)
        return requested, f'run directory: {requested} (--resume)'
    if exist_ok:
        _make(requested)
        held = _run_file(requested)
        live = not _lock(requested)
        note = ('another run is writing there too' if live else
                'writing over the run there' if held else None)
        return requested, f'run directory: {requested}' + (f' (--exist-ok: {note})' if note else '')
    why = None
    for candidate in _names(requested):
        if candidate.exists() and not candidate.is_dir():
            continue
        held = _run_file(candidate)
        if not held:
            _make(candidate)
            if _lock(candidate):
                if not _run_file(candidate):  # a run that took the lock, saved and ended in between: not free
                    if candidate == requested:
                        return candidate, f'run directory: {candidate}'
                    return candidate, f'run directory: {candidate} ({requested} {why}; --exist-ok overwrites it)'
                _unlock_last()
        why = why or ('holds a run' if held else 'is in use by another run')
    raise AssertionError('unreachable: _names never ends')


def _names(requested: Path):
    """D, then D2, D3, ... (D-2, D-3, ... when D ends in a digit)."""
    yield requested
    sep = '-' if requested.name[-1:].isdigit() else ''
    for n in count(2):
        yield requested.with_name(f'{requested.name}{sep}{n}')


def _run_file(folder: Path) -> str | None:
    """The first of RUN_FILES in `folder`, or None."""
    return next((name for name in RUN_FILES if (folder / name).exists()), None)


def _make(folder: Path):
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a parent that is a file, no permission, a read-only disk
        fail(f'--out {folder}: cannot create the run directory ({type(e).__name__}: {e.strerror or e})')


def _lock(folder: Path) -> bool:
    """Take folder/.run.lock unless a live process holds it; True when this process now does (held until it ends)."""
    try:
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        fail(f'--out {folder}: cannot write in the run directory ({type(e).__name__}: {e.strerror or e})')
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:  # held by a live process
        os.close(fd)
        return False
    os.ftruncate(fd, 0)  # who holds it, for a person who looks
    os.write(fd, f'{socket.gethostname()} pid {os.getpid()} since {time.strftime("%Y-%m-%d %H:%M:%S")}\n'.encode())
    _held_locks.append(fd)
    return True


def _unlock_last():
    os.close(_held_locks.pop())


def release_claims():
    """Drop the locks this process holds, as its end would: for callers that run several runs in one process (tests,
    a notebook), once a run is over."""
    while _held_locks:
        _unlock_last()
