"""The directory a run writes to, chosen so that a new run never overwrites an earlier one.

`--out D` (D is the script's default, e.g. runs/retinaface, or what the user gave):
  - D does not exist, is empty, or holds nothing of a run: the run writes to D.
  - D holds a run or an evaluation (last.pt, best.pt, metrics.csv or results.json), or another run has claimed it:
    the run writes to the next free name, D2, D3, ... (yolov5's runs/train/exp, exp2, ...). After a name that ends
    in a digit a '-' comes first (runs/voc07 -> runs/voc07-2, runs/voc07-3), so the count never runs into the name;
    names are never parsed (--out runs/retinaface2 -> runs/retinaface22 would misread; it goes to retinaface2-2).
  - --exist-ok: D as given, whatever it holds (the run overwrites what it writes again).
  - --resume: D as given (it holds the run to continue).

A run claims its directory by creating the file `.claimed` in it with O_CREAT | O_EXCL, before it writes anything
else: of several runs started at the same moment with the same --out, exactly one creates the file, and the others
move on to the next name. The file stays, so a directory whose run died before its first checkpoint (args.json and
`.claimed` only) is not reused either: from outside it cannot be told from a run still in its first epoch. Delete
such a directory, or pass --exist-ok to write into it. Under torchrun rank 0 alone claims, and the other ranks learn
the path from it (a broadcast after the process group is up).
"""
import os
import socket
import time
from itertools import count
from pathlib import Path

import torch.distributed as dist

from .runtime import fail

CLAIM = '.claimed'
RUN_FILES = ('last.pt', 'best.pt', 'metrics.csv', 'results.json')  # what a training run or an evaluation leaves


def claim_run_dir(out, *, resume: bool = False, exist_ok: bool = False, rt=None) -> tuple[Path, str]:
    """The directory this run writes to and the line that says so (the first line a script prints).

    `rt` is the Runtime (common.runtime.setup): under torchrun rank 0 claims and broadcasts; without it, or with one
    process, this process claims. A path that cannot be a directory (a file, no permission) exits 2 with one line."""
    if rt is None or not rt.distributed:
        return _choose(Path(out), resume, exist_ok)
    message = [None, None, None]
    if rt.is_main:
        try:
            path, line = _choose(Path(out), resume, exist_ok)
            message = [str(path), line, None]
        except SystemExit:  # fail() has printed the reason; the other ranks must not wait for a path forever
            message = [None, None, 'rank 0 could not claim --out']
    dist.broadcast_object_list(message, src=0)
    path, line, error = message
    if error:
        raise SystemExit(2)
    return Path(path), line


def _choose(requested: Path, resume: bool, exist_ok: bool) -> tuple[Path, str]:
    if requested.exists() and not requested.is_dir():
        fail(f'--out {requested}: is a file, not a directory')
    if resume:
        return requested, f'run directory: {requested} (--resume)'
    if exist_ok:
        _make(requested)
        held = _held(requested)
        _mark(requested, exclusive=False)
        return requested, f'run directory: {requested}' + (' (--exist-ok: over the run there)' if held in RUN_FILES
                                                           else '')
    why = None
    for candidate in _names(requested):
        if candidate.exists() and not candidate.is_dir():
            continue
        _make(candidate)
        held = _held(candidate)
        if not held and _mark(candidate, exclusive=True):
            if candidate == requested:
                return candidate, f'run directory: {candidate}'
            return candidate, f'run directory: {candidate} ({requested} {why}; --exist-ok overwrites it)'
        why = why or ('is claimed by another run' if held in (None, CLAIM) else 'holds a run')
    raise AssertionError('unreachable: _names is endless')


def _names(requested: Path):
    """D, then D2, D3, ... (D-2, D-3, ... when D ends in a digit)."""
    yield requested
    sep = '-' if requested.name[-1:].isdigit() else ''
    for n in count(2):
        yield requested.with_name(f'{requested.name}{sep}{n}')


def _held(folder: Path) -> str | None:
    """What in `folder` says it is taken: the name of a run's file, CLAIM, or None for a free folder."""
    for name in RUN_FILES + (CLAIM,):
        if (folder / name).exists():
            return name
    return None


def _make(folder: Path):
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a parent that is a file, no permission, a read-only disk
        fail(f'--out {folder}: cannot create the run directory ({type(e).__name__}: {e.strerror or e})')


def _mark(folder: Path, exclusive: bool) -> bool:
    """Write folder/.claimed (who and when); with `exclusive`, only if no other process has: True when this one did."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    try:
        fd = os.open(folder / CLAIM, flags, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, 'w') as f:
        f.write(f'{socket.gethostname()} pid {os.getpid()} {time.strftime("%Y-%m-%d %H:%M:%S")}\n')
    return True
