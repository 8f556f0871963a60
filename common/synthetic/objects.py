"""Drawing synthetic photos of objects with exact boxes, and writing them as the synthetic Pascal VOC and ImageFolder
sets (make_voc, make_imagefolder).

Six real VOC class names, each drawn as a distinct silhouette with its own texture, so a detector has to learn shape
and pattern, not colour (every colour is drawn at random per object):

    bottle       tall body, shoulders, neck and cap       vertical stripes
    car          wide body, cabin, two wheels              checkerboard
    person       head, torso, legs                         polka dots on the torso
    tvmonitor    dark frame, screen, stand                 horizontal scan lines on the screen
    pottedplant  tapered pot under a crown of leaves       speckled leaves, banded pot
    aeroplane    fuselage, swept wings, tail fin           diagonal stripes

`make_object_image(rng)` gives a scene of 3-7 objects at scales from about 32 to 260 px on a cluttered background
(blobs, lines and distractor shapes of no class), overlapping each other and cut by the image border; an object
that is tiny or mostly hidden is marked difficult, as VOC annotators do. `make_object_crop(rng, name)` gives one
object filling most of a square image, for classification pretraining. Boxes are the tight extent of each object's
visible-or-not silhouette, clipped to the image, in continuous pixel coordinates (pixel i spans [i, i+1)). All
randomness comes from the numpy Generator passed in: same generator state, same pixels.
"""
from pathlib import Path

import cv2
import numpy as np

CLASSES = ('aeroplane', 'bottle', 'car', 'person', 'pottedplant', 'tvmonitor')
# height / width of each silhouette (before a +-15% jitter): the shapes differ in aspect as well as outline
ASPECTS = {'aeroplane': 0.6, 'bottle': 2.6, 'car': 0.55, 'person': 2.2, 'pottedplant': 1.1, 'tvmonitor': 0.8}
SIZE_RANGE = (32, 260)          # sqrt of the object's box area in pixels, drawn log-uniformly
DIFFICULT_SIZE = 16             # an object whose box is shorter than this on a side is difficult ...
DIFFICULT_VISIBLE = 0.4         # ... and so is one with less than this fraction of its silhouette in sight
SHIFT = 3                       # cv2 fixed-point drawing: coordinates in 1/8 pixel


def _colour(rng, low=20, high=235) -> tuple:
    return tuple(float(v) for v in rng.uniform(low, high, 3))


def _contrasting(rng, colour, min_distance=90.0) -> tuple:
    """A random colour at least `min_distance` (Euclidean, BGR) from `colour`: textures stay visible."""
    for _ in range(20):
        other = rng.uniform(0, 255, 3)
        if np.linalg.norm(other - np.asarray(colour)) >= min_distance:
            return tuple(float(v) for v in other)
    return tuple(float(255 - v) for v in colour)


def _points(points, origin=(0.0, 0.0)) -> np.ndarray:
    """Float (N,2) points in patch pixels -> cv2 fixed-point int32 polygon."""
    return np.round((np.asarray(points, np.float64) - origin) * (1 << SHIFT)).astype(np.int32)


def _fill(mask, points):
    cv2.fillPoly(mask, [_points(points)], 255, cv2.LINE_AA, SHIFT)


def _ellipse(mask, centre, axes, angle=0.0):
    centre = tuple(int(round(c * (1 << SHIFT))) for c in centre)
    axes = tuple(max(1, int(round(a * (1 << SHIFT)))) for a in axes)
    cv2.ellipse(mask, centre, axes, angle, 0, 360, 255, -1, cv2.LINE_AA, SHIFT)


# ---------------------------------------------------------------------------------------------------- textures

def _stripes(h, w, rng, direction) -> np.ndarray:
    """(h,w) float 0/1 pattern of stripes; direction 'vertical', 'horizontal' or 'diagonal'."""
    period = rng.uniform(0.12, 0.25) * (w if direction == 'vertical' else h if direction == 'horizontal'
                                        else (w + h) / 2)
    period = max(period, 3.0)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    coordinate = {'vertical': x, 'horizontal': y, 'diagonal': x + y}[direction]
    return ((coordinate / period + rng.uniform()) % 1.0 < 0.5).astype(np.float32)


def _checker(h, w, rng) -> np.ndarray:
    cell = max(3.0, rng.uniform(0.12, 0.2) * min(h, w) * 2)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return (((x // cell) + (y // cell)) % 2).astype(np.float32)


def _dots(h, w, rng) -> np.ndarray:
    pattern = np.zeros((h, w), np.uint8)
    step = max(4.0, rng.uniform(0.18, 0.3) * min(h, w * 2))
    radius = max(1.0, step * 0.28)
    for cy in np.arange(step / 2, h, step):
        for cx in np.arange(step / 2 + (cy // step % 2) * step / 2, w, step):
            _ellipse(pattern, (cx, cy), (radius, radius))
    return pattern.astype(np.float32) / 255


def _speckle(h, w, rng) -> np.ndarray:
    noise = rng.random((max(2, h // 4), max(2, w // 4))).astype(np.float32)
    return (cv2.resize(noise, (w, h), interpolation=cv2.INTER_NEAREST) > 0.5).astype(np.float32)


def _paint(canvas, mask, pattern, colour_a, colour_b):
    """Blend `pattern` (1 -> colour_a, 0 -> colour_b) into canvas where the anti-aliased `mask` is."""
    x, y, w, h = cv2.boundingRect(mask)  # only the part the mask covers: most shapes are small
    if w == 0 or h == 0:
        return
    canvas, mask, pattern = canvas[y:y + h, x:x + w], mask[y:y + h, x:x + w], pattern[y:y + h, x:x + w]
    alpha = (mask.astype(np.float32) / 255)[..., None]
    texture = pattern[..., None] * np.asarray(colour_a, np.float32) + (1 - pattern[..., None]) * np.asarray(
        colour_b, np.float32)
    canvas[:] = canvas * (1 - alpha) + texture * alpha


# ---------------------------------------------------------------------------------------------------- objects
# Each drawer paints one object into a float32 (h,w,3) patch and its silhouette into a uint8 (h,w) mask.


def _bottle(canvas, mask, rng):
    h, w = mask.shape
    neck, shoulder = w * rng.uniform(0.3, 0.42), h * rng.uniform(0.3, 0.4)
    body = [(0, h), (0, shoulder + w * 0.3), (w / 2 - neck / 2, shoulder), (w / 2 - neck / 2, h * 0.08),
            (w / 2 + neck / 2, h * 0.08), (w / 2 + neck / 2, shoulder), (w, shoulder + w * 0.3), (w, h)]
    part = np.zeros_like(mask)
    _fill(part, body)
    a = _colour(rng)
    _paint(canvas, part, _stripes(h, w, rng, 'vertical'), a, _contrasting(rng, a))
    cap = np.zeros_like(mask)
    _fill(cap, [(w / 2 - neck * 0.6, 0), (w / 2 + neck * 0.6, 0), (w / 2 + neck * 0.6, h * 0.09),
                (w / 2 - neck * 0.6, h * 0.09)])
    _paint(canvas, cap, np.ones((h, w), np.float32), _colour(rng), (0, 0, 0))
    np.maximum(mask, np.maximum(part, cap), out=mask)


def _car(canvas, mask, rng):
    h, w = mask.shape
    wheel = h * rng.uniform(0.22, 0.27)
    base = h - wheel
    body, cabin = np.zeros_like(mask), np.zeros_like(mask)
    _fill(body, [(0, base), (0, h * 0.45), (w, h * 0.5), (w, base)])
    front = rng.uniform(0.15, 0.3)
    _fill(cabin, [(w * front, h * 0.47), (w * (front + 0.12), 0), (w * 0.68, 0), (w * 0.85, h * 0.5)])
    a = _colour(rng)
    b = _contrasting(rng, a)
    _paint(canvas, np.maximum(body, cabin), _checker(h, w, rng), a, b)
    wheels = np.zeros_like(mask)
    hubs = np.zeros_like(mask)
    for cx in (w * 0.22, w * 0.78):
        _ellipse(wheels, (cx, base), (wheel, wheel))
        _ellipse(hubs, (cx, base), (wheel * 0.45, wheel * 0.45))
    _paint(canvas, wheels, np.ones((h, w), np.float32), (25, 25, 25), (0, 0, 0))
    _paint(canvas, hubs, np.ones((h, w), np.float32), (170, 170, 170), (0, 0, 0))
    np.maximum(mask, np.maximum(np.maximum(body, cabin), wheels), out=mask)


def _person(canvas, mask, rng):
    h, w = mask.shape
    head_r = min(w * 0.3, h * 0.11)
    head, torso, legs = np.zeros_like(mask), np.zeros_like(mask), np.zeros_like(mask)
    _ellipse(head, (w / 2, head_r), (head_r, head_r))
    hip = h * rng.uniform(0.52, 0.6)
    _fill(torso, [(w * 0.12, head_r * 2.1), (w * 0.88, head_r * 2.1), (w, hip), (0, hip)])
    gap = w * rng.uniform(0.06, 0.12)
    _fill(legs, [(w * 0.15, hip - 1), (w / 2 - gap, hip - 1), (w / 2 - gap, h), (w * 0.18, h)])
    _fill(legs, [(w / 2 + gap, hip - 1), (w * 0.85, hip - 1), (w * 0.82, h), (w / 2 + gap, h)])
    _paint(canvas, head, np.ones((h, w), np.float32), _colour(rng, 60, 220), (0, 0, 0))
    a = _colour(rng)
    _paint(canvas, torso, _dots(h, w, rng), _contrasting(rng, a), a)
    _paint(canvas, legs, np.ones((h, w), np.float32), _colour(rng, 10, 120), (0, 0, 0))
    np.maximum(mask, np.maximum(np.maximum(head, torso), legs), out=mask)


def _tvmonitor(canvas, mask, rng):
    h, w = mask.shape
    stand = h * rng.uniform(0.1, 0.16)
    frame, screen, foot = np.zeros_like(mask), np.zeros_like(mask), np.zeros_like(mask)
    _fill(frame, [(0, 0), (w, 0), (w, h - stand), (0, h - stand)])
    border = max(1.5, min(w, h) * rng.uniform(0.06, 0.1))
    _fill(screen, [(border, border), (w - border, border), (w - border, h - stand - border),
                   (border, h - stand - border)])
    _fill(foot, [(w * 0.42, h - stand), (w * 0.58, h - stand), (w * 0.7, h), (w * 0.3, h)])
    dark = _colour(rng, 5, 60)
    _paint(canvas, np.maximum(frame, foot), np.ones((h, w), np.float32), dark, (0, 0, 0))
    a = _colour(rng, 80, 255)
    _paint(canvas, screen, _stripes(h, w, rng, 'horizontal'), a, _contrasting(rng, a))
    np.maximum(mask, np.maximum(frame, foot), out=mask)


def _pottedplant(canvas, mask, rng):
    h, w = mask.shape
    pot_top = h * rng.uniform(0.55, 0.65)
    pot, leaves = np.zeros_like(mask), np.zeros_like(mask)
    _fill(pot, [(w * 0.2, pot_top), (w * 0.8, pot_top), (w * 0.68, h), (w * 0.32, h)])
    for _ in range(7):
        cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.2, 0.45) * h
        _ellipse(leaves, (cx, cy), (rng.uniform(0.12, 0.25) * w, rng.uniform(0.1, 0.2) * h), rng.uniform(0, 180))
    leaves[int(pot_top):] = 0  # the crown sits on the pot
    pot_colour = _colour(rng)
    _paint(canvas, pot, _stripes(h, w, rng, 'horizontal'), pot_colour, _contrasting(rng, pot_colour))
    a = _colour(rng)
    _paint(canvas, leaves, _speckle(h, w, rng), a, _contrasting(rng, a))
    np.maximum(mask, np.maximum(pot, leaves), out=mask)


def _aeroplane(canvas, mask, rng):
    h, w = mask.shape
    plane = np.zeros_like(mask)
    _ellipse(plane, (w / 2, h * 0.5), (w / 2, h * 0.12))                                       # fuselage
    root = w * rng.uniform(0.4, 0.5)
    _fill(plane, [(root, h * 0.45), (root + w * 0.18, h * 0.45), (root - w * 0.05, 0), (root - w * 0.15, 0)])
    _fill(plane, [(root, h * 0.55), (root + w * 0.18, h * 0.55), (root - w * 0.05, h), (root - w * 0.15, h)])
    _fill(plane, [(w * 0.92, h * 0.45), (w, h * 0.45), (w * 0.98, h * 0.08), (w * 0.9, h * 0.08)])  # tail fin
    a = _colour(rng)
    _paint(canvas, plane, _stripes(h, w, rng, 'diagonal'), a, _contrasting(rng, a))
    np.maximum(mask, plane, out=mask)


DRAWERS = {'aeroplane': _aeroplane, 'bottle': _bottle, 'car': _car, 'person': _person,
           'pottedplant': _pottedplant, 'tvmonitor': _tvmonitor}


def _composite(region, patch, mask):
    """Place a drawn patch (its colours already weighted by their coverage, over black) on `region` in place."""
    region *= 1 - (mask.astype(np.float32) / 255)[..., None]
    region += patch


def draw_object(name, width, height, rng, mirror=None):
    """One object of class `name` in a (height, width) patch: (BGR float32 patch, uint8 silhouette mask).
    `mirror` (default: a coin flip) draws it facing the other way."""
    canvas = np.zeros((height, width, 3), np.float32)
    mask = np.zeros((height, width), np.uint8)
    DRAWERS[name](canvas, mask, rng)
    if rng.random() < 0.5 if mirror is None else mirror:
        canvas, mask = canvas[:, ::-1], mask[:, ::-1]
    return canvas, mask


# ---------------------------------------------------------------------------------------------------- scenes

def background(height, width, rng, distractors: int = 6) -> np.ndarray:
    """A cluttered float32 BGR background: a colour gradient, soft blobs, lines and shapes of no class."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    a, b = np.asarray(_colour(rng), np.float32), np.asarray(_colour(rng), np.float32)
    t = ((x / width) * rng.uniform(-1, 1) + (y / height) * rng.uniform(-1, 1))[..., None]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = a * (1 - t) + b * t
    for _ in range(int(rng.integers(4, 10))):
        blob = np.zeros((height, width), np.uint8)
        _ellipse(blob, (rng.uniform(0, width), rng.uniform(0, height)),
                 (rng.uniform(10, width / 3), rng.uniform(10, height / 3)), rng.uniform(0, 180))
        blob = cv2.GaussianBlur(blob, (0, 0), rng.uniform(3, 12))
        _paint(image, blob, np.ones((height, width), np.float32), _colour(rng), (0, 0, 0))
    for _ in range(int(rng.integers(3, 9))):
        p, q = rng.uniform(0, 1, 2) * (width, height), rng.uniform(0, 1, 2) * (width, height)
        cv2.line(image, tuple(int(v) for v in p), tuple(int(v) for v in q), _colour(rng), int(rng.integers(1, 4)),
                 cv2.LINE_AA)
    for _ in range(distractors):  # plain polygons and ellipses: object-like, but no class's outline or pattern
        shape = np.zeros((height, width), np.uint8)
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(8, 60)
        if rng.random() < 0.5:
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))
            _fill(shape, np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1))
        else:
            _ellipse(shape, (cx, cy), (r, r * rng.uniform(0.4, 1)), rng.uniform(0, 180))
        _paint(image, shape, np.ones((height, width), np.float32), _colour(rng), (0, 0, 0))
    return image


def _box_iou(box, boxes) -> np.ndarray:
    if not len(boxes):
        return np.zeros(0)
    boxes = np.asarray(boxes)
    inter = (np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
             * np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None))
    area = (box[2] - box[0]) * (box[3] - box[1])
    return inter / (area + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter)


def make_object_image(rng, classes=CLASSES, width=None, height=None, max_overlap=0.3, distractors=4):
    """One scene: (BGR uint8 image, list of {'name', 'box' x1y1x2y2 float, 'difficult', 'truncated'}).
    3-7 objects; a new one overlaps each earlier one by IoU <= `max_overlap` and is drawn over it."""
    width = int(width or rng.integers(320, 501))
    height = int(height or rng.integers(240, 401))
    image = background(height, width, rng, distractors)
    owner = np.full((height, width), -1, np.int32)  # which object each pixel shows, for the visible fraction
    objects, areas = [], []
    for _ in range(int(rng.integers(3, 8))):
        name = classes[int(rng.integers(len(classes)))]
        size = float(np.exp(rng.uniform(*np.log(SIZE_RANGE))))
        aspect = ASPECTS[name] * rng.uniform(0.85, 1.15)
        w, h = max(4, int(round(size / np.sqrt(aspect)))), max(4, int(round(size * np.sqrt(aspect))))
        for _ in range(20):  # somewhere it does not hide another object too much; up to 1/4 outside the image
            x0 = int(rng.integers(-w // 4, width - 3 * w // 4 + 1))
            y0 = int(rng.integers(-h // 4, height - 3 * h // 4 + 1))
            overlaps = _box_iou((x0, y0, x0 + w, y0 + h), [o['full'] for o in objects])
            if not len(objects) or overlaps.max() <= max_overlap:
                break
        else:
            continue
        patch, mask = draw_object(name, w, h, rng)
        # the part of the patch inside the image
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + w, width), min(y0 + h, height)
        if ix1 <= ix0 or iy1 <= iy0:
            continue
        px0, py0 = ix0 - x0, iy0 - y0
        m = mask[py0:py0 + iy1 - iy0, px0:px0 + ix1 - ix0]
        if not m.any():
            continue
        _composite(image[iy0:iy1, ix0:ix1], patch[py0:py0 + iy1 - iy0, px0:px0 + ix1 - ix0], m)
        owner[iy0:iy1, ix0:ix1][m >= 128] = len(objects)
        rows, cols = np.nonzero(m)
        box = np.array([ix0 + cols.min(), iy0 + rows.min(), ix0 + cols.max() + 1, iy0 + rows.max() + 1], np.float32)
        areas.append(int((mask >= 128).sum()))
        objects.append({'name': name, 'box': box, 'full': (x0, y0, x0 + w, y0 + h),
                        'truncated': bool(x0 < 0 or y0 < 0 or x0 + w > width or y0 + h > height)})
    visible = np.bincount(owner[owner >= 0], minlength=len(objects))
    for i, o in enumerate(objects):
        del o['full']
        x1, y1, x2, y2 = o['box']
        o['difficult'] = bool(min(x2 - x1, y2 - y1) < DIFFICULT_SIZE or visible[i] < DIFFICULT_VISIBLE * areas[i])
    noise = rng.normal(0, rng.uniform(2, 6), image.shape).astype(np.float32)  # sensor noise
    return np.clip(image + noise, 0, 255).astype(np.uint8), objects


def make_object_crop(rng, name, size=128) -> np.ndarray:
    """A square BGR uint8 image of one `name` object filling 45-90% of it, placed at random on a background."""
    image = background(size, size, rng, distractors=2)
    extent = size * rng.uniform(0.45, 0.9)
    aspect = ASPECTS[name] * rng.uniform(0.85, 1.15)
    w, h = (extent, extent * aspect) if aspect < 1 else (extent / aspect, extent)  # the long side is `extent`
    w, h = max(4, int(round(w))), max(4, int(round(h)))
    x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
    patch, mask = draw_object(name, w, h, rng)
    _composite(image[y0:y0 + h, x0:x0 + w], patch, mask)
    noise = rng.normal(0, rng.uniform(2, 6), image.shape).astype(np.float32)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------- on disk

JPEG_QUALITY = 90


def make_voc(out, num_images: int = 300, seed: int = 0):
    """Synthetic Pascal VOC: OUT/VOCdevkit/VOC2007/{JPEGImages, Annotations, ImageSets/Main} with `num_images`
    scenes split as VOC2007 is split into trainval (2 of every 3 images) and test (every third), plus the devkit's
    train / val halves of trainval and the per-class <class>_<split>.txt lists (1 present, 0 only difficult,
    -1 absent)."""
    from ..data.voc import write_annotation
    root = Path(out) / 'VOCdevkit' / 'VOC2007'
    for folder in ('JPEGImages', 'Annotations', 'ImageSets/Main'):
        (root / folder).mkdir(parents=True, exist_ok=True)
    splits = {'trainval': [], 'train': [], 'val': [], 'test': []}
    presence = {}
    for index in range(num_images):
        image_id = f'{index + 1:06d}'
        image, objects = make_object_image(np.random.default_rng([seed, 7, index]))  # one stream per image
        cv2.imwrite(str(root / 'JPEGImages' / f'{image_id}.jpg'), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        write_annotation(root / 'Annotations' / f'{image_id}.xml', image_id, image.shape[1], image.shape[0], objects)
        if index % 3 == 2:
            splits['test'].append(image_id)
        else:
            splits['trainval'].append(image_id)
            splits['train' if index % 3 == 0 else 'val'].append(image_id)
        presence[image_id] = {name: max([1 if not o['difficult'] else 0 for o in objects if o['name'] == name],
                                        default=-1) for name in CLASSES}
    for split, ids in splits.items():
        (root / 'ImageSets' / 'Main' / f'{split}.txt').write_text(''.join(f'{i}\n' for i in ids))
        for name in CLASSES:
            (root / 'ImageSets' / 'Main' / f'{name}_{split}.txt').write_text(
                ''.join(f'{i} {presence[i][name]:2d}\n' for i in ids))
    return root.parent


def make_imagefolder(out, num_images: int = 600, seed: int = 0, size: int = 160):
    """Synthetic classification images: OUT/train/<class>/<n>.jpg (`num_images`, the classes in turn) and
    OUT/val/<class>/<n>.jpg (num_images // 4), one object of the class on a cluttered background each."""
    out = Path(out)
    for split, count, code in (('train', num_images, 0), ('val', max(len(CLASSES), num_images // 4), 1)):
        for index in range(count):
            name = CLASSES[index % len(CLASSES)]
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            image = make_object_crop(np.random.default_rng([seed, code, index]), name, size)
            cv2.imwrite(str(folder / f'{index:05d}.jpg'), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return out
