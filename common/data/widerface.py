"""Face detection data on disk: the RetinaFace label.txt reader, the WIDER FACE dataset and its collate function
(the official download's conversion to this layout: common/data/prepare_widerface.py).

On-disk layout (MindFace / Pytorch_Retinaface):

    <split_dir>/label.txt                     '# event/name.jpg' then one line per face
    <split_dir>/images/<event>/<name>.jpg

A face line is `x y w h` (boxes-only files) or `x y w h` + 5 x `lx ly flag` [+ score]; landmark coordinates of
-1 mean "no landmarks". Annotations follow the project conventions: `boxes` float32 (N,4) x1,y1,x2,y2,
`landmarks` float32 (N,5,2), `landmark_valid` bool (N,).

Command line (counts of a label file, and the first malformed line if there is one):

    python -m common.data.widerface --labels data/widerface/train/label.txt
"""
import argparse
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from .images import image_problem, scan_images

FACE_LINE_SIZES = (4, 19, 20)  # x y w h | + 5 x (lx ly flag) | + score
FACE_LINE_HELP = 'expected 4, 19 or 20 numbers (x y w h [5 x (lx ly flag)] [score])'


class LabelFormatError(ValueError):
    """A label file that does not follow the expected format; the message starts with `<path>:<line>:`."""


@dataclass
class LabelRecord:
    """The faces of one image as read from a label file."""
    name: str                  # relative image path as written in the file, e.g. '0--Parade/0_Parade_1.jpg'
    boxes: np.ndarray          # float32 (N,4) x1,y1,x2,y2
    landmarks: np.ndarray      # float32 (N,5,2); zeros where landmark_valid is False
    landmark_valid: np.ndarray  # bool (N,)
    line: int                  # 1-based line number of the '#' line
    dropped: int = 0           # faces dropped for zero or negative width/height

    def target(self) -> dict:
        """The annotation dict (fresh copies, so transforms may modify it) plus the image name."""
        return {'boxes': self.boxes.copy(), 'landmarks': self.landmarks.copy(),
                'landmark_valid': self.landmark_valid.copy(), 'name': self.name}


def _bad_number_message(tokens: list[str]) -> str:
    bad = next(t for t in tokens if not is_number(t))
    return f'{FACE_LINE_HELP}, got non-number {bad!r}'


def is_number(token: str) -> bool:
    """The token parses as a float (the label readers use it to name the first bad token of a line)."""
    try:
        float(token)
        return True
    except ValueError:
        return False


def parse_retinaface_labels(path) -> list[LabelRecord]:
    """Read a RetinaFace label.txt into one LabelRecord per '#' line (images without faces included).

    Raises FileNotFoundError for a missing file and LabelFormatError (`path:line: what was expected`) for a
    malformed line. Boxes with zero or negative size are dropped and counted in `LabelRecord.dropped`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'label file not found: {path}')
    with open(path, encoding='utf-8', errors='replace') as f:
        lines = f.read().splitlines()

    # Pass 1: split lines and check token counts; numbers are converted all at once below (no per-face numpy).
    names, header_lines, face_counts = [], [], []
    face_tokens: list[list[str]] = []
    face_lines: list[int] = []
    for number, raw in enumerate(lines, start=1):
        tokens = raw.split()
        if not tokens:
            continue
        if tokens[0].startswith('#'):
            # '# name.jpg' or '#name.jpg'; extra tokens (some files add width height) are ignored
            name = tokens[0][1:] or (tokens[1] if len(tokens) > 1 else '')
            if not name:
                raise LabelFormatError(f'{path}:{number}: expected "# <event>/<image>.jpg", got {raw.strip()!r}')
            names.append(name)
            header_lines.append(number)
            face_counts.append(0)
            continue
        if not names:
            raise LabelFormatError(f'{path}:{number}: expected a "# <event>/<image>.jpg" line before the first face, '
                                   f'got {raw.strip()[:60]!r}')
        if len(tokens) not in FACE_LINE_SIZES:
            raise LabelFormatError(f'{path}:{number}: {FACE_LINE_HELP}, got {len(tokens)}')
        face_tokens.append(tokens)
        face_lines.append(number)
        face_counts[-1] += 1
    if not names:
        raise LabelFormatError(f'{path}:1: expected "# <event>/<image>.jpg" lines; none found '
                               '(is this a RetinaFace label.txt?)')

    # Pass 2: one float conversion of every token, then vectorised gathering into a (faces, 19) table.
    sizes = np.fromiter(map(len, face_tokens), dtype=np.int64, count=len(face_tokens))
    try:
        flat = np.fromiter(map(float, itertools.chain.from_iterable(face_tokens)), dtype=np.float64,
                           count=int(sizes.sum()))
    except ValueError:
        index = next(i for i, tokens in enumerate(face_tokens) if not all(map(is_number, tokens)))
        raise LabelFormatError(f'{path}:{face_lines[index]}: {_bad_number_message(face_tokens[index])}') from None
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    table = np.full((len(sizes), 19), -1.0, np.float32)  # boxes-only lines keep -1 landmarks
    table[:, :4] = flat[starts[:, None] + np.arange(4)]
    full = sizes >= 19
    table[full, 4:] = flat[starts[full, None] + np.arange(4, 19)]

    x, y, w, h = table[:, 0], table[:, 1], table[:, 2], table[:, 3]
    all_boxes = np.stack([x, y, x + w, y + h], axis=1)
    all_landmarks = table[:, 4:19].reshape(-1, 5, 3)[:, :, :2].copy()
    # a point given as (-1, -1) means 'no landmarks' (a single -1 coordinate is a real point just off the image)
    all_valid = ~(all_landmarks == -1).all(axis=2).any(axis=1)
    all_landmarks[~all_valid] = 0
    keep = (w > 0) & (h > 0)

    records = []
    bounds = np.concatenate([[0], np.cumsum(face_counts)]).astype(int)
    for i, name in enumerate(names):
        part = slice(bounds[i], bounds[i + 1])
        kept = keep[part]
        records.append(LabelRecord(name=name, boxes=all_boxes[part][kept], landmarks=all_landmarks[part][kept],
                                   landmark_valid=all_valid[part][kept], line=header_lines[i],
                                   dropped=int((~kept).sum())))
    return records


class WiderFaceDataset(torch.utils.data.Dataset):
    """WIDER FACE in the MindFace layout: `split_dir/label.txt` and `split_dir/images/<event>/<name>.jpg`.

    The constructor checks every listed image (missing or undecodable ones are named, skipped and counted) and
    prints one summary line. `dataset[i]` is `(image BGR uint8 HxWx3, target)` where target is the annotation dict
    plus 'name', passed through `transform(image, target, rng)` when given. `rng` is a numpy Generator seeded with
    (seed, epoch, i): the augmentation of a sample depends only on those, never on the worker that loads it, so a
    resumed run (or one with another --workers) draws the same. Call `set_epoch(epoch)` before each epoch.
    """

    def __init__(self, split_dir, transform=None, verbose: bool = True, scan_threads: int = 8, seed: int = 0):
        self.split_dir = Path(split_dir)
        self.transform = transform
        self.seed, self.epoch = seed, 0
        if not self.split_dir.is_dir():
            raise FileNotFoundError(f'WIDER FACE split folder not found: {self.split_dir}')
        label_path = self.split_dir / 'label.txt'
        if not label_path.is_file():
            raise FileNotFoundError(f'label file not found: {label_path} (expected <split>/label.txt and '
                                    '<split>/images/<event>/<name>.jpg)')
        records = parse_retinaface_labels(label_path)
        paths = [self.image_path(r.name) for r in records]
        problems = scan_images(paths, image_problem, scan_threads)
        self.records = [r for r, p in zip(records, problems) if p is None]
        self.skipped = {kind: [r.name for r, p in zip(records, problems) if p == kind]
                        for kind in ('missing', 'corrupt')}
        self.dropped_boxes = sum(r.dropped for r in records)
        if verbose:
            print(self.summary())

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def image_path(self, name: str) -> Path:
        return self.split_dir / 'images' / name

    def summary(self) -> str:
        faces = sum(len(r.boxes) for r in self.records)
        text = f'WIDER {self.split_dir.name}: {len(self.records)} images, {faces} faces'
        missing, corrupt = self.skipped['missing'], self.skipped['corrupt']
        if missing or corrupt:
            named = ', '.join((missing + corrupt)[:5]) + (', ...' if len(missing) + len(corrupt) > 5 else '')
            text += (f'; skipped {len(missing) + len(corrupt)} ({len(missing)} missing, {len(corrupt)} corrupt) '
                     f'under {self.split_dir / "images"}: {named}')
        if self.dropped_boxes:
            text += f'; dropped {self.dropped_boxes} boxes with zero or negative size'
        return text

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        path = self.image_path(record.name)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:  # passed the scan, so it changed on disk since
            raise OSError(f'cannot read image {path} (it was readable when the dataset was scanned)')
        target = record.target()
        if self.transform is not None:
            image, target = self.transform(image, target, np.random.default_rng([self.seed, self.epoch, index]))
        return image, target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m common.data.widerface', description=__doc__.split('\n')[0])
    parser.add_argument('--labels', required=True, help='path to a RetinaFace label.txt')
    args = parser.parse_args(argv)
    try:
        records = parse_retinaface_labels(args.labels)
    except (FileNotFoundError, LabelFormatError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    faces = sum(len(r.boxes) for r in records)
    with_landmarks = sum(int(r.landmark_valid.sum()) for r in records)
    without_faces = sum(1 for r in records if len(r.boxes) == 0)
    dropped = sum(r.dropped for r in records)
    print(f'{args.labels}: {len(records)} images, {faces} faces ({with_landmarks} with landmarks), '
          f'{without_faces} images without faces, {dropped} boxes dropped for zero or negative size')
    return 0


if __name__ == '__main__':
    sys.exit(main())
