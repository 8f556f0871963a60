"""A --data-root made of the real WIDER FACE material in ../shared/data, for the checks that need real faces
(tests/test_real_widerface.py, bench/finetune_keeps_ap.py). Nothing is copied: images are symlinked.

    root = make_real_root(shared_data, 'tmp/real', train='val_416')          # 200 squashed images to finetune on
    root = make_real_root(shared_data, 'tmp/real', train=FIVE_NAMES, val=OTHER_FIVE)
    python bench/real_widerface.py --out data/real_val10        # all ten in val/, for --evaluate

`val/` and `ground_truth/` hold full-resolution val images of val_samples/ (label.txt with their boxes, and the
official .mat structure restricted to them, from gt.json), so `--evaluate` and the evaluation during training run the
official protocol on them; `train/` holds either some of those images or the 200 images of val_416/.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from common.synthetic import write_widerface_ground_truth  # noqa: E402

LEVEL_KEYS = ('blur', 'expression', 'illumination', 'occlusion', 'pose')


def _write_split(split_dir: Path, entries: list[tuple[str, str, Path, np.ndarray]]):
    """label.txt (boxes only) and symlinked images for (event, name, image path, boxes xywh) entries."""
    lines = []
    for event, name, source, boxes in entries:
        image = split_dir / 'images' / event / f'{name}.jpg'
        image.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(source.resolve(), image)
        lines.append(f'# {event}/{name}.jpg')
        lines += [' '.join(f'{v:g}' for v in box) for box in boxes.tolist()]
    (split_dir / 'label.txt').write_text('\n'.join(lines) + '\n')


def make_real_root(shared_data, root, *, train='val_416', val=None) -> Path:
    """train: 'val_416' (its 200 images, boxes as its label.txt gives them) or a list of val_samples names;
    val: val_samples names (default: all ten, or those not in `train`)."""
    shared_data, root = Path(shared_data).resolve(), Path(root)  # absolute: the symlinks below point into it
    samples = shared_data / 'widerface' / 'val_samples'
    gt = json.loads((samples / 'gt.json').read_text())
    if val is None:
        val = [n for n in sorted(gt) if isinstance(train, str) or n not in train]

    def sample_entry(name):
        boxes = np.array(gt[name]['boxes_xywh'], np.int64).reshape(-1, 4)
        return gt[name]['event'], name, samples / 'images' / f'{name}.jpg', boxes

    if train == 'val_416':
        source = shared_data / 'widerface' / 'val_416'
        (root / 'train').mkdir(parents=True, exist_ok=True)
        os.symlink(source / 'images', root / 'train' / 'images')
        os.symlink(source / 'label.txt', root / 'train' / 'label.txt')
    else:
        _write_split(root / 'train', [sample_entry(n) for n in train])
    _write_split(root / 'val', [sample_entry(n) for n in val])

    entries = []
    for name in val:
        event, _, _, boxes = sample_entry(name)
        sets = {}
        for setting in ('easy', 'medium', 'hard'):
            sets[setting] = np.zeros(len(boxes), bool)
            sets[setting][gt[name][f'{setting}_idx']] = True
        levels = {k: np.zeros(len(boxes), np.uint8) for k in LEVEL_KEYS}
        entries.append({'event': event, 'name': name, 'boxes': boxes, 'levels': levels, 'sets': sets})
    write_widerface_ground_truth(root, entries, seed=0)
    return root


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description='A --data-root of the real WIDER FACE material (all ten '
                                                 'full-resolution val images in val/, val_416 in train/).')
    parser.add_argument('--out', required=True, help='new folder for the data root')
    parser.add_argument('--shared', default=str(REPO.parent / 'shared' / 'data'), help='the shared test material')
    args = parser.parse_args()
    if not (Path(args.shared) / 'widerface' / 'val_samples' / 'gt.json').is_file():
        sys.exit(f'error: --shared {args.shared}: no widerface/val_samples/gt.json there')
    if Path(args.out).exists():
        sys.exit(f'error: --out {args.out}: exists already')
    print(make_real_root(args.shared, args.out))
