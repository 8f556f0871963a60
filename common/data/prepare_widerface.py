"""The official WIDER FACE download -> the MindFace layout that WiderFaceDataset reads.

The download has WIDER_{train,val}/images/<event>/<name>.jpg and wider_face_split/wider_face_{train,val}_bbx_gt.txt
(boxes with attribute flags, no landmarks); the evaluation kit has ground_truth/wider_{face,easy,medium,hard}_val.mat.
`prepare_widerface` writes {train,val}/label.txt + images (symlinks or copies) and ground_truth/, taking
landmarks from RetinaFace label files where given:

    python -m common.data.prepare_widerface --wider-root downloads/widerface --out data/widerface \\
        --labels retinaface_labels/train/label.txt      # landmarks optional; repeat --labels for more files
"""
import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

from .images import is_image_file
from .widerface import LabelFormatError, LabelRecord, parse_retinaface_labels


GT_FILES = {'train': 'wider_face_train_bbx_gt.txt', 'val': 'wider_face_val_bbx_gt.txt'}
EVAL_MATS = tuple(f'wider_{name}_val.mat' for name in ('face', 'easy', 'medium', 'hard'))


def parse_wider_bbx_gt(path) -> list[tuple[str, np.ndarray]]:
    """The official wider_face_*_bbx_gt.txt: per image a name line, a count line, then `count` lines of
    `x1 y1 w h blur expression illumination invalid occlusion pose` (a count of 0 is followed by one line of
    zeros). Returns [(name, int array (count, 10))]; a malformed file raises LabelFormatError with `path:line`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'WIDER FACE ground-truth file not found: {path}')
    lines = path.read_text(encoding='utf-8', errors='replace').splitlines()
    images, i = [], 0
    while i < len(lines):
        name = lines[i].strip()
        if not name:
            i += 1
            continue
        if not is_image_file(name):
            raise LabelFormatError(f'{path}:{i + 1}: expected an image name like 0--Parade/0_Parade_1.jpg, '
                                   f'got {name[:60]!r}')
        if i + 1 >= len(lines) or not lines[i + 1].strip().isdigit():
            raise LabelFormatError(f'{path}:{i + 2}: expected the number of faces of {name}')
        count = int(lines[i + 1])
        rows = lines[i + 2:i + 2 + max(count, 1)]  # a count of 0 still has one line of zeros
        if len(rows) < max(count, 1):
            raise LabelFormatError(f'{path}:{len(lines)}: file ends inside {name} ({count} faces announced)')
        values = []
        for k, row in enumerate(rows):
            tokens = row.split()[:10]
            if len(tokens) < 10 or not all(t.lstrip('-').isdigit() for t in tokens):
                raise LabelFormatError(f'{path}:{i + 3 + k}: expected 10 integers (x1 y1 w h blur expression '
                                       f'illumination invalid occlusion pose) for face {k + 1} of {name}, '
                                       f'got {row.strip()[:60]!r}')
            values.append([int(t) for t in tokens])
        faces = np.array(values, np.int64).reshape(-1, 10)
        images.append((name, faces[:count]))
        i += 2 + max(count, 1)
    return images


def _place_image(source: Path, target: Path, mode: str):
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    if mode == 'symlink':
        try:
            target.symlink_to(source.resolve())
            return
        except OSError:  # e.g. Windows without the symlink privilege: copy instead
            pass
    shutil.copy2(source, target)


def prepare_widerface(wider_root, out, labels=(), mode: str = 'symlink') -> dict:
    """Build `out/{train,val}/{label.txt,images}` and `out/ground_truth/*.mat` from the official download
    (WIDER_train/images, WIDER_val/images, wider_face_split/*_bbx_gt.txt). Faces marked invalid are dropped;
    landmarks come from RetinaFace label files in `labels` (matched by image name and box), else -1.
    Returns per split counts; images listed but absent are named in 'missing' and left out."""
    root, out = Path(wider_root), Path(out)
    if not root.is_dir():
        raise FileNotFoundError(f'WIDER FACE folder not found: {root}')
    landmarks_by_name = {}
    for label_file in labels:
        for record in parse_retinaface_labels(label_file):
            landmarks_by_name[record.name.removeprefix('./')] = record
    report = {}
    for split, gt_name in GT_FILES.items():
        gt_path = root / 'wider_face_split' / gt_name
        image_dir = root / f'WIDER_{split}' / 'images'
        if not gt_path.is_file():
            report[split] = None
            continue
        if not image_dir.is_dir():
            raise FileNotFoundError(f'{image_dir} not found (next to {gt_path})')
        counts = {'images': 0, 'faces': 0, 'invalid_dropped': 0, 'with_landmarks': 0, 'missing': []}
        lines = []
        for name, faces in parse_wider_bbx_gt(gt_path):
            source = image_dir / name
            if not source.is_file():
                counts['missing'].append(name)
                continue
            _place_image(source, out / split / 'images' / name, mode)
            counts['invalid_dropped'] += int((faces[:, 7] != 0).sum())
            faces = faces[faces[:, 7] == 0]  # column 7: invalid
            lines.append(f'# {name}')
            known = landmarks_by_name.get(name)
            for x, y, w, h in faces[:, :4].tolist():
                line, has_landmarks = _face_line(x, y, w, h, known)
                lines.append(line)
                counts['with_landmarks'] += has_landmarks
            counts['images'] += 1
            counts['faces'] += len(faces)
        (out / split).mkdir(parents=True, exist_ok=True)
        (out / split / 'label.txt').write_text('\n'.join(lines) + '\n')
        report[split] = counts
    if all(report[split] is None for split in GT_FILES):
        raise FileNotFoundError(f'neither {root / "wider_face_split" / GT_FILES["train"]} nor '
                                f'{GT_FILES["val"]} found (is --wider-root the unpacked WIDER FACE download?)')
    report['ground_truth'] = _copy_eval_mats(root, out / 'ground_truth')
    return report


def _face_line(x, y, w, h, known: LabelRecord | None) -> tuple[str, bool]:
    """A RetinaFace label line, and whether it has landmarks: those of the face in `known` (the same image in a
    RetinaFace label file) whose box matches this one within a pixel, else -1."""
    if known is not None and len(known.boxes):
        box = np.array([x, y, x + w, y + h], np.float32)
        distance = np.abs(known.boxes - box).max(axis=1)
        best = int(distance.argmin())
        if distance[best] <= 1 and known.landmark_valid[best]:
            points = ' '.join(f'{px:g} {py:g} 0.0' for px, py in known.landmarks[best].tolist())
            return f'{x} {y} {w} {h} {points} 1.0', True
    return f'{x} {y} {w} {h}' + ' -1.0' * 16, False


def _copy_eval_mats(root: Path, destination: Path) -> list[str]:
    """Copy wider_{face,easy,medium,hard}_val.mat from the folder under root holding most of them (the eval kit's
    ground_truth/); returns the names copied."""
    found = {}
    for path in root.rglob('wider_*_val.mat'):
        found.setdefault(path.parent, []).append(path)
    if not found:
        return []
    folder = max(found, key=lambda f: sum(p.name in EVAL_MATS for p in found[f]))
    destination.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in sorted(found[folder]):
        if path.name in EVAL_MATS:
            shutil.copy2(path, destination / path.name)
            copied.append(path.name)
    return copied


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m common.data.prepare_widerface',
                                     description=__doc__.split('\n')[0])
    parser.add_argument('--wider-root', required=True,
                        help='folder with WIDER_train/, WIDER_val/, wider_face_split/ (and the eval kit)')
    parser.add_argument('--out', required=True, help='output folder: {train,val}/label.txt + images, ground_truth/')
    parser.add_argument('--labels', action='append',
                        help='RetinaFace label.txt with landmarks to take them from (repeatable)')
    parser.add_argument('--copy', action='store_true', help='copy the images instead of symlinking them')
    args = parser.parse_args(argv)
    try:
        report = prepare_widerface(args.wider_root, args.out, args.labels or (), 'copy' if args.copy else 'symlink')
    except (FileNotFoundError, LabelFormatError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    for split in GT_FILES:
        counts = report[split]
        if counts is None:
            print(f'{split}: no {Path(args.wider_root) / "wider_face_split" / GT_FILES[split]}, skipped')
            continue
        missing = counts['missing']
        text = (f'{split}: {counts["images"]} images, {counts["faces"]} faces ({counts["with_landmarks"]} with '
                f'landmarks), {counts["invalid_dropped"]} invalid faces dropped -> {Path(args.out) / split}')
        if missing:
            text += f'; {len(missing)} listed images missing: ' + ', '.join(missing[:5]) + (
                ', ...' if len(missing) > 5 else '')
        print(text)
    copied = report['ground_truth']
    print(f'ground truth: {", ".join(copied)} -> {Path(args.out) / "ground_truth"}' if copied else
          f'ground truth: no wider_*_val.mat under {args.wider_root} (get the eval kit for WIDER evaluation)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
