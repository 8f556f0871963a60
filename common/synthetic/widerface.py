"""Synthetic WIDER FACE: photos drawn by common/synthetic/faces.py (faces from 8 to 300 px tall with their five
landmarks, among face-like distractors on cluttered backgrounds), written in the MindFace layout with the official
evaluation's ground truth, and a contact sheet that shows them.

    OUT/{train,val}/label.txt               RetinaFace format: '# event/name.jpg', then per face
                                            'x y w h  lx ly 0.0 (x5)  score' (landmarks -1 for ~10% of faces)
    OUT/{train,val}/images/<event>/<name>.jpg
    OUT/ground_truth/wider_{face,easy,medium,hard}_val.mat   the official evaluation structure for val
"""
import io
import math
from pathlib import Path

import cv2
import numpy as np

from .faces import make_face_image

JPEG_QUALITY = 90
LANDMARK_MISSING_RATE = 0.10


# ----------------------------------------------------------------------------------------------------------------
# WIDER FACE on disk


def _label_line(box_xywh, landmarks, with_landmarks: bool) -> str:
    x, y, w, h = box_xywh
    if not with_landmarks:
        return f'{x} {y} {w} {h}' + ' -1.0' * 15 + ' -1.0'
    points = ' '.join(f'{px:.3f} {py:.3f} 0.0' for px, py in landmarks)
    return f'{x} {y} {w} {h} {points} 1.0'


def _integer_box(box) -> np.ndarray:
    """x1,y1,x2,y2 float -> x y w h integers (like WIDER's), never smaller than the face."""
    x1, y1 = math.floor(box[0]), math.floor(box[1])
    return np.array([x1, y1, math.ceil(box[2]) - x1, math.ceil(box[3]) - y1], np.int32)


def write_widerface_split(split_dir: Path, split: str, num_images: int, seed: int) -> list[dict]:
    """Images and label.txt of one split; returns per image {event, name, boxes (N,4 int xywh), levels}."""
    events = [f'{e}--Synthetic' for e in range(min(4, max(1, num_images // 10)))]
    split_code = {'train': 0, 'val': 1}[split]
    entries = []
    for index in range(num_images):
        rng = np.random.default_rng([seed, split_code, index])  # one stream per image: order-independent
        image, faces = make_face_image(rng)
        event = events[index % len(events)]
        name = f'{event.split("--")[0]}_Synthetic_{split}_{index:05d}'
        path = split_dir / 'images' / event / f'{name}.jpg'
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        with_landmarks = rng.random(len(faces)) >= LANDMARK_MISSING_RATE
        boxes = np.array([_integer_box(f['box']) for f in faces], np.int32).reshape(-1, 4)
        lines = [_label_line(b, f['landmarks'], keep) for b, f, keep in zip(boxes, faces, with_landmarks)]
        levels = {key: np.array([f[key] for f in faces], np.uint8)
                  for key in ('blur', 'expression', 'illumination', 'occlusion', 'pose')}
        entries.append({'event': event, 'name': name, 'boxes': boxes, 'lines': lines, 'levels': levels})
    # label.txt lists the images event by event, in the order the .mat ground truth uses
    entries.sort(key=lambda e: (events.index(e['event']), e['name']))
    with open(split_dir / 'label.txt', 'w') as f:
        for entry in entries:
            f.write(f'# {entry["event"]}/{entry["name"]}.jpg\n')
            f.writelines(line + '\n' for line in entry['lines'])
    return entries


def difficulty_sets(entry: dict) -> dict:
    """Which faces each WIDER setting counts: easy = large, clear, not heavily occluded; medium = not tiny and not
    heavily occluded; hard = all. So easy is inside medium is inside hard, as in the official sets."""
    heights = entry['boxes'][:, 3]
    occlusion, blur = entry['levels']['occlusion'], entry['levels']['blur']
    medium = (heights >= 20) & (occlusion < 2)
    return {'easy': medium & (heights >= 50) & (blur < 2), 'medium': medium, 'hard': np.ones(len(heights), bool)}


def _cell(items) -> np.ndarray:
    """A MATLAB cell column (n,1) of the given arrays / strings."""
    cell = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        cell[i, 0] = item
    return cell


def _save_mat(path: Path, content: dict, note: str):
    """scipy.io.savemat with a fixed header text (it would carry the time of day), so the bytes are reproducible."""
    import scipy.io
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, content, do_compression=False)
    data = bytearray(buffer.getvalue())
    header = f'MATLAB 5.0 MAT-file, Platform: GLNXA64, Created by: {note}'.encode('ascii')[:116]
    data[:116] = header.ljust(116, b' ')
    path.write_bytes(bytes(data))


def write_widerface_ground_truth(out: Path, entries: list[dict], seed: int):
    """wider_face_val.mat and wider_{easy,medium,hard}_val.mat with the official fields, nesting and dtypes:
    per event a cell of per-image arrays; face_bbx_list int32 (N,4) x y w h; *_label_list uint8 (N,1);
    gt_list 1-based uint8 (uint16 past 255) (M,1); an image without faces has one all-zero box and (0,0) gt_list.
    An entry is {event, name, boxes (N,4) xywh, levels {blur, expression, illumination, occlusion, pose: (N,)}}
    plus, optionally, 'sets' {easy, medium, hard: (N,) bool} (else difficulty_sets decides, from the levels)."""
    events = list(dict.fromkeys(e['event'] for e in entries))
    by_event = [[e for e in entries if e['event'] == event] for event in events]
    level_keys = {'blur': 'blur_label_list', 'expression': 'expression_label_list',
                  'illumination': 'illumination_label_list', 'occlusion': 'occlusion_label_list',
                  'pose': 'pose_label_list'}

    def boxes_of(e):
        return e['boxes'].astype(np.int32) if len(e['boxes']) else np.zeros((1, 4), np.int32)

    def column(values, count):
        return values.reshape(-1, 1).astype(np.uint8) if count else np.zeros((1, 1), np.uint8)

    content = {
        'event_list': _cell(events),
        'file_list': _cell([_cell([e['name'] for e in group]) for group in by_event]),
        'face_bbx_list': _cell([_cell([boxes_of(e) for e in group]) for group in by_event]),
        'invalid_label_list': _cell([_cell([column(np.zeros(len(e['boxes'])), len(e['boxes'])) for e in group])
                                     for group in by_event]),
    }
    for key, field in level_keys.items():
        content[field] = _cell([_cell([column(e['levels'][key], len(e['boxes'])) for e in group])
                                for group in by_event])
    gt_dir = out / 'ground_truth'
    gt_dir.mkdir(parents=True, exist_ok=True)
    _save_mat(gt_dir / 'wider_face_val.mat', content, f'common.synthetic seed {seed}')
    for setting in ('easy', 'medium', 'hard'):
        def gt_list(e, setting=setting):
            if not len(e['boxes']):
                return np.zeros((0, 0), np.uint8)
            index = np.flatnonzero((e.get('sets') or difficulty_sets(e))[setting]) + 1
            dtype = np.uint8 if len(e['boxes']) <= 255 else np.uint16
            return index.astype(dtype).reshape(-1, 1)
        gt = dict(content, gt_list=_cell([_cell([gt_list(e) for e in group]) for group in by_event]))
        _save_mat(gt_dir / f'wider_{setting}_val.mat', gt, f'common.synthetic seed {seed}')


def make_widerface(out, num_images: int = 600, seed: int = 0) -> Path:
    """Synthetic WIDER FACE in the MindFace layout (see the module docstring); val gets num_images // 4 images."""
    out = Path(out)
    write_widerface_split(out / 'train', 'train', num_images, seed)
    val = write_widerface_split(out / 'val', 'val', max(1, num_images // 4), seed)
    write_widerface_ground_truth(out, val, seed)
    return out


# ----------------------------------------------------------------------------------------------------------------
# contact sheet (docs/synthetic_widerface.png)


def _fit(image, size) -> np.ndarray:
    """Scale into a size x size tile, centred on dark grey."""
    scale = size / max(image.shape[:2])
    resized = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)),
                         interpolation=cv2.INTER_AREA)
    tile = np.full((size, size, 3), 40, np.uint8)
    y, x = (size - resized.shape[0]) // 2, (size - resized.shape[1]) // 2
    tile[y:y + resized.shape[0], x:x + resized.shape[1]] = resized
    return tile


def contact_sheet(data, out, columns: int = 3, rows: int = 2, tile: int = 320, crops: int = 6):
    """A PNG grid of synthetic train images with their boxes and landmarks, and a row of face crops from small to
    large (enlarged), to see what the faces look like. Saved with a 256-colour palette to stay small."""
    from PIL import Image

    from ..data.widerface import parse_retinaface_labels
    from ..visualize import draw_detections

    split = Path(data) / 'train'
    records = [r for r in parse_retinaface_labels(split / 'label.txt') if len(r.boxes)]
    tiles, faces = [], []
    for record in records[:columns * rows]:
        image = cv2.imread(str(split / 'images' / record.name))
        valid = record.landmark_valid
        drawn = draw_detections(image, record.boxes[valid], landmarks=record.landmarks[valid])
        drawn = draw_detections(drawn, record.boxes[~valid], colour=(0, 200, 255))  # faces without landmarks
        tiles.append(_fit(drawn, tile))
        faces += [(image, box, lm if ok else None) for box, lm, ok in zip(record.boxes, record.landmarks, valid)]
    grid = np.vstack([np.hstack(tiles[r * columns:(r + 1) * columns]) for r in range(len(tiles) // columns)])
    # face crops at evenly spaced size ranks, each enlarged to one tile height
    faces.sort(key=lambda f: f[1][3] - f[1][1])
    crop_size = grid.shape[1] // crops
    strip = []
    for i in np.linspace(0, len(faces) - 1, crops).round().astype(int):
        image, box, lm = faces[i]
        half = 0.9 * max(box[2] - box[0], box[3] - box[1])
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        x0, y0 = int(max(cx - half, 0)), int(max(cy - half, 0))
        crop = image[y0:int(cy + half) + 1, x0:int(cx + half) + 1]
        scale = crop_size / max(crop.shape[:2])
        crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        label = f'{int(round(box[3] - box[1]))} px'
        crop_box = (box[None] - [x0, y0, x0, y0]) * scale
        if lm is not None:
            crop = draw_detections(crop, crop_box, landmarks=(lm[None] - [x0, y0]) * scale)
        else:
            crop = draw_detections(crop, crop_box, colour=(0, 200, 255))
        tile_image = _fit(crop, crop_size)
        cv2.putText(tile_image, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        strip.append(tile_image)
    sheet = np.vstack([grid, np.hstack(strip)]) if strip else grid
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(cv2.cvtColor(sheet, cv2.COLOR_BGR2RGB))
    palette = rgb.quantize(256, method=Image.Quantize.MEDIANCUT)
    rgb.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(out, optimize=True)
    return out
