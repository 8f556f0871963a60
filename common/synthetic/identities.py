"""Synthetic people for face recognition: aligned face crops of many identities, written as an ImageFolder with LFW
pair lists, so train_recognition.py runs and is tested without CASIA-WebFace or LFW.

    python -m common.synthetic identities --out data/identities --seed 0

An identity is a fixed set of face traits: the shape of the face, jaw and chin; the size, spacing, shape and tilt of
the eyes; brows (thickness, arch, tilt, height); nose length and width; mouth height, width and lips; ears; hair
style and hairline; moles, freckles, facial hair, glasses. Its colours come from small palettes shared by all
identities (4 skin tones, 5 hair colours, 3 iris shades), so many people share each colour and colour alone does not
tell them apart. Each picture of a person varies what a camera varies: head roll and yaw, expression (smile, open
mouth, blink, raised brows, gaze), glasses taken off, the light's strength and direction, colour cast, contrast,
blur, noise, background and clothes, and the crop's alignment (a few pixels and percent of scale), like the output of
a face aligner. Everything is drawn from numpy Generators seeded with (seed, split, identity[, image]): the same seed
writes the same bytes.

Layout (`make_identities`):

    OUT/train/<Name>/<Name>_0001.jpg ...    training identities (an ImageFolder)
    OUT/test/<Name>/<Name>_0001.jpg ...     other identities, never in train
    OUT/pairs.txt                           the official LFW format: '10<TAB>P', then per set P positive lines
                                            'name i j' and P negative lines 'name1 i name2 j'; the 10 sets hold
                                            disjoint people, as LFW's do
    OUT/test_pair.txt                       the recognition tutorial's format 'a.jpg b.jpg label': the same pairs,
                                            all positives then all negatives, as its lfw_test_pair.txt

`colour_histogram_embeddings(root)` is the colour-only baseline the set is checked against (see
tests/test_synthetic_identities.py and `python -m common.synthetic colour-baseline --data OUT`);
`python -m common.synthetic contact-sheet --data OUT --out sheet.png` shows a few people.
"""
import argparse
import math
from pathlib import Path

import cv2
import numpy as np

from .faces import FaceCanvas, composite, draw_background, draw_torso, ellipse_points, finish_photo, hair_cap

SIDE = 128                 # crop size in pixels (the tutorial's lfw-align-128 crops)
JPEG_QUALITY = 92
SUPERSAMPLING = 2          # features are drawn at twice the size and shrunk: clean anti-aliasing at 128 px
FACE_HEIGHT = 0.58         # face box height (forehead to chin) as a fraction of the crop
FACE_CENTRE = (0.5, 0.54)  # where an aligner puts the face box centre, as fractions of the crop

# shared palettes (BGR): many identities per colour
SKIN_PALETTE = np.array([[200, 215, 245], [150, 180, 225], [112, 145, 200], [72, 98, 150]], np.float32)
HAIR_PALETTE = np.array([[20, 20, 24], [30, 42, 64], [40, 70, 115], [85, 145, 200], [150, 150, 155]], np.float32)
IRIS_PALETTE = np.array([[22, 30, 45], [60, 85, 105], [150, 125, 95]], np.float32)
HAIR_STYLES = ('short', 'long', 'bald', 'fringe', 'crew', 'side', 'curly')
FACIAL_HAIR = ('none', 'moustache', 'goatee', 'beard', 'stubble')
GLASSES = ('none', 'round', 'square')
# the default set: sized so that train_recognition.py's defaults learn it in 15 CPU epochs (see README.md)
TRAIN_IDENTITIES, TRAIN_IMAGES, TEST_IDENTITIES, TEST_IMAGES, PAIRS_PER_SET = 150, 6, 50, 4, 30
SETS = 10  # LFW's 10 folds


# ----------------------------------------------------------------------------------------------------------------
# who a person is, and how one picture of them varies


def sample_identity(rng) -> dict:
    """The traits of one person (face units: x in face widths, y in face heights, from the face box centre)."""
    moles = rng.integers(0, 4) if rng.random() < 0.5 else 0
    return {
        'skin': int(rng.integers(len(SKIN_PALETTE))), 'hair': int(rng.integers(len(HAIR_PALETTE))),
        'iris': int(rng.integers(len(IRIS_PALETTE))),
        'hair_style': str(rng.choice(HAIR_STYLES)), 'hairline': rng.uniform(-0.46, -0.28),
        'temples': rng.uniform(0.05, 0.35), 'hair_volume': rng.uniform(0.0, 0.08), 'part_side': rng.choice([-1, 1]),
        'face_width': rng.uniform(0.82, 1.15), 'jaw': rng.uniform(0.0, 0.4), 'chin': rng.uniform(0.88, 1.12),
        'cheek_shadow': rng.uniform(0.0, 0.22),
        'eye_spread': rng.uniform(0.85, 1.15), 'eye_y': rng.uniform(-0.045, 0.03), 'eye_size': rng.uniform(0.7, 1.35),
        'eye_aspect': rng.uniform(0.35, 0.7), 'eye_tilt': rng.uniform(-0.25, 0.25),
        'brow_thickness': rng.uniform(0.01, 0.05), 'brow_arch': rng.uniform(0.0, 0.06),
        'brow_tilt': rng.uniform(-0.04, 0.04), 'brow_gap': rng.uniform(0.045, 0.09),
        'brow_length': rng.uniform(0.8, 1.25),
        'nose_drop': rng.uniform(0.14, 0.24), 'nose_width': rng.uniform(0.6, 1.6), 'nose_bridge': rng.random() < 0.6,
        'mouth_drop': rng.uniform(0.11, 0.2), 'mouth_width': rng.uniform(0.7, 1.3),
        'lip_thickness': rng.uniform(0.5, 1.6), 'lip_shade': rng.uniform(0.5, 0.85),
        'ear_size': rng.uniform(0.8, 1.3),
        'moles': np.column_stack([rng.uniform(-0.3, 0.3, moles), rng.uniform(-0.3, 0.4, moles),
                                  rng.uniform(0.008, 0.02, moles)]),
        'freckles': rng.uniform([-0.32, -0.05], [0.32, 0.12], (int(rng.integers(12, 30)), 2))
        if rng.random() < 0.15 else np.zeros((0, 2)),
        'facial_hair': str(rng.choice(FACIAL_HAIR, p=[0.55, 0.12, 0.1, 0.13, 0.1])),
        'glasses': str(rng.choice(GLASSES, p=[0.74, 0.13, 0.13])), 'frame_shade': rng.uniform(0.0, 0.5),
    }


def sample_view(rng) -> dict:
    """How one picture of a person differs from the others: pose, expression, alignment error."""
    return {
        'roll': float(np.clip(rng.normal(0, 5), -12, 12)), 'yaw': float(np.clip(rng.normal(0, 0.13), -0.35, 0.35)),
        'smile': rng.uniform(-0.3, 1.0), 'mouth_open': rng.random() < 0.2, 'blink': rng.random() < 0.08,
        'brow_raise': rng.uniform(0.0, 0.015), 'gaze': rng.uniform(-0.25, 0.25), 'glasses_off': rng.random() < 0.05,
        'scale': rng.uniform(0.96, 1.04), 'shift': rng.normal(0, 0.012, 2),
    }


# ----------------------------------------------------------------------------------------------------------------
# drawing


def _colour(bgr) -> tuple:
    return tuple(float(v) for v in np.clip(bgr, 0, 255))


def rotated_ellipse(cx, cy, a, b, angle=0.0, t0=0.0, t1=2 * math.pi, n=28) -> np.ndarray:
    """(n,2) points of an ellipse arc with semi-axes a, b turned by `angle` radians about its centre."""
    p = ellipse_points(0, 0, a, b, t0, t1, n)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * p[:, 0] - s * p[:, 1], cy + s * p[:, 0] + c * p[:, 1]], 1)


def face_shape(identity, n=48) -> np.ndarray:
    """The face: an ellipse from forehead to chin, narrowing towards the chin by the jaw trait, the chin lengthened or
    shortened."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    narrowing = 1 - identity['jaw'] * np.clip(np.sin(t), 0, None) ** 2
    y = 0.56 * np.sin(t)
    y = np.where(y > 0, y * identity['chin'], y)
    return np.stack([0.46 * np.cos(t) * narrowing, -0.04 + y], 1)


def draw_hair_back(canvas, identity, hair):
    style, volume = identity['hair_style'], identity['hair_volume']
    if style == 'long':
        canvas.fill(ellipse_points(0, 0.2, 0.6 + volume, 0.78), hair, opaque=True)
    elif style == 'curly':
        t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
        radius = 1 + 0.05 * np.sin(11 * t)
        canvas.fill(np.stack([(0.58 + volume) * radius * np.cos(t), -0.1 + 0.6 * radius * np.sin(t)], 1), hair,
                    opaque=True)
    elif style in ('short', 'side', 'fringe'):
        canvas.fill(ellipse_points(0, -0.08, 0.52 + volume / 2, 0.5), hair, opaque=True)


def draw_hair_front(canvas, identity, hair):
    style, hairline, temples = identity['hair_style'], identity['hairline'], identity['temples']
    if style in ('short', 'long', 'curly'):
        canvas.fill(hair_cap(hairline, temples), hair, opaque=True)
    elif style == 'fringe':  # straight bangs low on the forehead
        canvas.fill(hair_cap(-0.24 - 0.05 * identity['hair_volume'], 0.02), hair, opaque=True)
    elif style == 'crew':  # close-cropped: a tight cap
        canvas.fill(hair_cap(hairline - 0.04, temples * 0.5, 0.48, 0.58), hair, opaque=True)
    elif style == 'side':  # parted, swept to one side
        side = identity['part_side']
        canvas.fill(hair_cap(hairline, temples), hair, opaque=True)
        canvas.fill(np.array([[side * 0.12, hairline - 0.12], [-side * 0.5, hairline - 0.02], [-side * 0.46,
                              hairline + 0.14], [-side * 0.1, hairline + 0.02]]), hair, opaque=True)
    elif style == 'bald':  # a ring of hair above the ears
        for side in (-1, 1):
            canvas.fill(ellipse_points(side * 0.44, -0.17, 0.07, 0.13), hair, depth=-0.04 * side, opaque=True)


def draw_eyes_and_brows(canvas, identity, view, hair):
    spread, ey = 0.186 * identity['eye_spread'], -0.116 + identity['eye_y']
    a = 0.082 * identity['eye_size']
    b = a * identity['eye_aspect']
    iris = _colour(IRIS_PALETTE[identity['iris']])
    white = (226.0, 230.0, 236.0)
    lid = _colour(HAIR_PALETTE[identity['hair']] * 0.5)
    brow = _colour(np.asarray(hair) * 0.75)
    for side in (-1, 1):
        ex = side * spread
        tilt = side * identity['eye_tilt']
        narrow = 1 - 0.35 * max(0.0, side * view['yaw'])  # the eye on the side the face turns to looks narrower
        if view['blink']:
            canvas.line(rotated_ellipse(ex, ey, a * narrow, b * 0.3, tilt, 0, math.pi, 10), lid, 0.014, 0.07)
        else:
            canvas.fill(rotated_ellipse(ex, ey, a * narrow, b, tilt), white, 0.07)
            gx = ex + view['gaze'] * a
            r = min(0.5 * a, b)
            canvas.fill(ellipse_points(gx, ey, r * narrow, r), iris, 0.07)
            canvas.fill(ellipse_points(gx, ey, 0.45 * r * narrow, 0.45 * r), (12.0, 12.0, 15.0), 0.07)
            canvas.line(rotated_ellipse(ex, ey, a * narrow, b, tilt, math.pi, 2 * math.pi, 12), lid, 0.012, 0.07)
        by = ey - identity['brow_gap'] - view['brow_raise']
        half = 0.1 * identity['brow_length'] * narrow
        t = np.linspace(-1, 1, 9)
        points = np.stack([ex + side * 0.01 + half * t,
                           by - identity['brow_arch'] * (1 - t ** 2) + side * identity['brow_tilt'] * t], 1)
        canvas.line(points, brow, identity['brow_thickness'], 0.07)
    return spread, ey, a, b


def draw_glasses(canvas, identity, spread, ey, a, b):
    frame = _colour(np.full(3, 30 + 150 * identity['frame_shade']))
    for side in (-1, 1):
        ex = side * spread
        if identity['glasses'] == 'round':
            canvas.line(ellipse_points(ex, ey, 1.5 * a, 1.5 * a * 0.85), frame, 0.014, 0.08, True)
        else:
            w, h = 1.55 * a, 1.1 * a
            canvas.line(np.array([[ex - w, ey - h], [ex + w, ey - h], [ex + w, ey + h], [ex - w, ey + h]]), frame,
                        0.016, 0.08, True)
    canvas.line(np.array([[-spread + 1.5 * a, ey - 0.01], [spread - 1.5 * a, ey - 0.01]]), frame, 0.014, 0.08)


def draw_nose(canvas, identity, skin, ey):
    ny = ey + identity['nose_drop']
    width = 0.04 * identity['nose_width']
    shadow = _colour(np.asarray(skin) * 0.7)
    if identity['nose_bridge']:
        canvas.line(np.array([[-0.02, ey + 0.03], [-0.03, ny - 0.04], [-width * 1.1, ny]]), shadow, 0.016, 0.12)
    canvas.fill(ellipse_points(0, ny - 0.005, width * 1.2, 0.035), _colour(np.asarray(skin) * 1.07 + 6), 0.16)
    for side in (-1, 1):
        canvas.fill(ellipse_points(side * width, ny + 0.025, 0.55 * width, 0.012), (25.0, 25.0, 40.0), 0.14)
    return ny


def draw_mouth(canvas, identity, view, skin, my, half):
    corner_lift = 0.03 * view['smile']
    thickness = identity['lip_thickness']
    lip = _colour(np.asarray(skin) * np.array([0.62, 0.58, 0.92]) * (0.6 + 0.5 * identity['lip_shade']))
    open_h = 0.05 if view['mouth_open'] else 0.0
    t = np.linspace(-1, 1, 11)
    centre = my - corner_lift * t ** 2  # smiling lifts the corners
    upper = np.stack([half * t, centre - 0.03 * thickness * (1 - t ** 2) - open_h / 2], 1)
    lower = np.stack([half * t[::-1], centre[::-1] + (0.045 * thickness + open_h / 2) * (1 - t[::-1] ** 2)], 1)
    canvas.fill(np.concatenate([upper, lower]), lip, 0.07)
    middle = np.stack([half * t, centre + 0.006 * (1 - t ** 2)], 1)
    if view['mouth_open']:
        inner = np.concatenate([middle[1:-1] - [0, open_h / 2], middle[-2:0:-1] + [0, open_h / 2]])
        canvas.fill(inner, (30.0, 25.0, 50.0), 0.07)
    else:
        canvas.line(middle, (40.0, 30.0, 60.0), 0.012, 0.07)


def draw_facial_hair(canvas, identity, hair, skin, ny, my, half):
    kind = identity['facial_hair']
    if kind == 'moustache':
        t = np.linspace(-1, 1, 9)
        top = np.stack([1.1 * half * t, ny + 0.045 + 0.01 * t ** 2], 1)
        bottom = np.stack([1.15 * half * t[::-1], my - 0.025 + 0.03 * t[::-1] ** 2], 1)
        canvas.fill(np.concatenate([top, bottom]), hair, 0.07)
    elif kind == 'goatee':
        canvas.fill(ellipse_points(0, my + 0.12, 0.1, 0.08), hair, 0.05)
    elif kind == 'beard':
        arc = ellipse_points(0, 0.08, 0.44, 0.44 * identity['chin'], 0.05 * math.pi, 0.95 * math.pi, 20)
        canvas.fill(np.concatenate([arc, [[-half - 0.03, my + 0.04], [0, my + 0.07], [half + 0.03, my + 0.04]]]), hair,
                    0.03)
    elif kind == 'stubble':
        arc = ellipse_points(0, 0.08, 0.42, 0.42 * identity['chin'], 0.05 * math.pi, 0.95 * math.pi, 20)
        canvas.fill(np.concatenate([arc, [[-half, my - 0.03], [half, my - 0.03]]]),
                    _colour(np.asarray(skin) * 0.72 + np.asarray(hair) * 0.08), 0.03)


def draw_identity_head(canvas: FaceCanvas, identity: dict, view: dict):
    """Draw the person's head on the canvas as this view shows it."""
    skin = _colour(SKIN_PALETTE[identity['skin']])
    hair = _colour(HAIR_PALETTE[identity['hair']])
    shade = _colour(SKIN_PALETTE[identity['skin']] * 0.8)
    draw_hair_back(canvas, identity, hair)
    canvas.fill(np.array([[-0.2, 0.3], [0.2, 0.3], [0.22, 0.78], [-0.22, 0.78]]), shade, opaque=True)  # neck
    if identity['hair_style'] != 'long' and abs(view['yaw']) < 0.5:
        for side in (-1, 1):
            size = identity['ear_size']
            canvas.fill(ellipse_points(side * 0.46, -0.02, 0.06 * size, 0.12 * size), shade, depth=-0.05 * side,
                        opaque=True)
    canvas.fill(face_shape(identity), skin, opaque=True)
    if identity['cheek_shadow'] > 0.02:  # contour under the cheekbones
        dark = _colour(SKIN_PALETTE[identity['skin']] * (1 - identity['cheek_shadow']))
        for side in (-1, 1):
            canvas.fill(rotated_ellipse(side * 0.31, 0.12, 0.06, 0.12, side * 0.3), dark, 0.02)
    draw_hair_front(canvas, identity, hair)
    for u, v, r in identity['moles']:
        canvas.fill(ellipse_points(u, v, r, r, n=12), (30.0, 35.0, 50.0), 0.05)
    freckle = _colour(SKIN_PALETTE[identity['skin']] * 0.78)
    for u, v in identity['freckles']:
        canvas.fill(ellipse_points(u, v, 0.008, 0.008, n=8), freckle, 0.05)
    spread, ey, a, b = draw_eyes_and_brows(canvas, identity, view, hair)
    ny = draw_nose(canvas, identity, skin, ey)
    my = ny + identity['mouth_drop']
    half = 0.152 * identity['mouth_width']
    if identity['facial_hair'] != 'moustache':  # beards lie under the lips, a moustache over the upper one
        draw_facial_hair(canvas, identity, hair, skin, ny, my, half)
    draw_mouth(canvas, identity, view, skin, my, half)
    if identity['facial_hair'] == 'moustache':
        draw_facial_hair(canvas, identity, hair, skin, ny, my, half)
    if identity['glasses'] != 'none' and not view['glasses_off']:
        draw_glasses(canvas, identity, spread, ey, a, b)


def render_face_crop(identity: dict, rng, side: int = SIDE) -> np.ndarray:
    """One aligned side x side BGR picture of the person: background, clothes, the head in this view's pose and
    expression, lit, then camera effects."""
    view = sample_view(rng)
    # the scene behind, out of focus and paler than the face as in portrait photos
    image = cv2.GaussianBlur(draw_background(rng, side, side), (0, 0), 1.5)
    image = cv2.addWeighted(image, 0.6, np.full_like(image, int(rng.integers(60, 200))), 0.4, 0)
    h = FACE_HEIGHT * side * view['scale']
    w = h * 0.8 * identity['face_width']
    centre = np.array(FACE_CENTRE) * side + view['shift'] * side
    draw_torso(image, rng, centre, w, h, view['roll'])
    canvas = FaceCanvas(centre, w, h, view['roll'], view['yaw'], int(math.ceil(1.2 * max(w, h))), SUPERSAMPLING)
    draw_identity_head(canvas, identity, view)
    colour, alpha = canvas.render()
    # light: strength, direction across the face, darker towards the rim of the head (roundness)
    light = rng.uniform(0.7, 1.15)
    gx, gy = rng.uniform(-0.5, 0.5, 2)
    u, v = canvas.face_coords()
    rim = (u / 0.5) ** 2 + ((v + 0.04) / 0.6) ** 2
    colour *= (light * (1 + gx * u + gy * v) * (1.08 - 0.3 * np.minimum(rim, 1.3) ** 2)).clip(0.25, 1.6)[..., None]
    canvas_image = image.astype(np.float32)
    composite(canvas_image, colour, alpha, *canvas.origin)
    # white balance: a colour cast per picture on top of finish_photo's mild one
    canvas_image *= rng.uniform(0.85, 1.15, 3).astype(np.float32)
    image = np.clip(canvas_image, 0, 255).astype(np.uint8)
    if rng.random() < 0.2:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 1.0))
    return finish_photo(image, rng)


# ----------------------------------------------------------------------------------------------------------------
# the data set on disk


def identity_name(split: str, index: int) -> str:
    return f'{split.capitalize()}_{index:04d}'


def image_path(name: str, number: int) -> str:
    """LFW's naming: Name/Name_0001.jpg, numbered from 1."""
    return f'{name}/{name}_{number:04d}.jpg'


def write_split(root: Path, split: str, identities: int, images: int, seed: int) -> list[str]:
    split_code = {'train': 0, 'test': 1}[split]
    names = []
    for index in range(identities):
        person = sample_identity(np.random.default_rng([seed, split_code, index]))
        name = identity_name(split, index)
        (root / name).mkdir(parents=True, exist_ok=True)
        for number in range(1, images + 1):
            rng = np.random.default_rng([seed, split_code, index, number])  # one stream per picture
            crop = render_face_crop(person, rng)
            cv2.imwrite(str(root / image_path(name, number)), crop, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        names.append(name)
    return names


def sample_pairs(names: list[str], images: int, pairs_per_set: int, seed: int):
    """Per set (people split round-robin into 10 disjoint groups): pairs_per_set distinct positive pairs
    (name, i, j), i < j, and as many distinct negative pairs (name1, i, name2, j) within the set, each sorted as
    LFW's lists are."""
    rng = np.random.default_rng([seed, 2])
    sets = []
    for k in range(SETS):
        group = names[k::SETS]
        if len(group) < 2:
            raise ValueError(f'{len(names)} test identities: pairs need at least {2 * SETS} (two per set)')
        same = [(n, i, j) for n in group for i in range(1, images + 1) for j in range(i + 1, images + 1)]
        if len(same) < pairs_per_set:
            raise ValueError(f'set {k + 1}: only {len(same)} positive pairs possible, {pairs_per_set} asked for')
        positives = [same[i] for i in rng.choice(len(same), pairs_per_set, replace=False)]
        negatives = set()
        while len(negatives) < pairs_per_set:
            a, b = rng.choice(len(group), 2, replace=False)
            i, j = rng.integers(1, images + 1, 2)
            negatives.add((group[min(a, b)], int(i if a < b else j), group[max(a, b)], int(j if a < b else i)))
        sets.append((sorted(positives), sorted(negatives)))
    return sets


def write_pair_lists(out: Path, sets, pairs_per_set: int):
    lines = [f'{SETS}\t{pairs_per_set}']
    for positives, negatives in sets:
        lines += [f'{n}\t{i}\t{j}' for n, i, j in positives]
        lines += [f'{a}\t{i}\t{b}\t{j}' for a, i, b, j in negatives]
    (out / 'pairs.txt').write_text('\n'.join(lines) + '\n')
    same = [f'{image_path(n, i)} {image_path(n, j)} 1' for positives, _ in sets for n, i, j in positives]
    different = [f'{image_path(a, i)} {image_path(b, j)} 0' for _, negatives in sets for a, i, b, j in negatives]
    (out / 'test_pair.txt').write_text('\n'.join(same + different) + '\n')


def make_identities(out, num_images: int | None = None, seed: int = 0, *, identities: int = TRAIN_IDENTITIES,
                    images_per_identity: int = TRAIN_IMAGES, test_identities: int = TEST_IDENTITIES,
                    test_images_per_identity: int = TEST_IMAGES, pairs_per_set: int = PAIRS_PER_SET) -> Path:
    """Synthetic face-recognition set: train/ and test/ ImageFolders of different people, pairs.txt, test_pair.txt.
    num_images, when given, sets the training identities to num_images // images_per_identity."""
    out = Path(out)
    if num_images is not None:
        identities = max(1, num_images // images_per_identity)
    write_split(out / 'train', 'train', identities, images_per_identity, seed)
    names = write_split(out / 'test', 'test', test_identities, test_images_per_identity, seed)
    write_pair_lists(out, sample_pairs(names, test_images_per_identity, pairs_per_set, seed), pairs_per_set)
    return out


def add_flags(parser: argparse.ArgumentParser):
    """The sizes of the set, for `python -m common.synthetic identities`."""
    parser.add_argument('--identities', type=int, default=TRAIN_IDENTITIES, help='training identities')
    parser.add_argument('--images-per-identity', type=int, default=TRAIN_IMAGES, help='pictures per training identity')
    parser.add_argument('--test-identities', type=int, default=TEST_IDENTITIES,
                        help='test identities (none of them in train)')
    parser.add_argument('--test-images-per-identity', type=int, default=TEST_IMAGES)
    parser.add_argument('--pairs-per-set', type=int, default=PAIRS_PER_SET,
                        help='positive (and as many negative) pairs in each of the 10 sets of pairs.txt')


def sizes_from(args) -> dict:
    return {'identities': args.identities, 'images_per_identity': args.images_per_identity,
            'test_identities': args.test_identities, 'test_images_per_identity': args.test_images_per_identity,
            'pairs_per_set': args.pairs_per_set}


# ----------------------------------------------------------------------------------------------------------------
# the colour-only baseline


def colour_histogram_embeddings(root, bins: int = 8, face_only: bool = True) -> dict:
    """{relative path: vector} with each image's BGR colour histogram (bins^3, square-rooted so that the cosine of
    two is their Bhattacharyya coefficient): what verification scores when only colour is looked at. face_only
    counts the central region where the aligned face lies (skin, eyes, lips, some hair), not the background."""
    root = Path(root)
    embeddings = {}
    for path in sorted(root.rglob('*.jpg')):
        image = cv2.imread(str(path))
        if face_only:
            h, w = image.shape[:2]
            image = image[int(0.3 * h):int(0.8 * h), int(0.3 * w):int(0.7 * w)]
        histogram = cv2.calcHist([image], [0, 1, 2], None, [bins] * 3, [0, 256] * 3).ravel()
        embeddings[path.relative_to(root).as_posix()] = np.sqrt(histogram / histogram.sum())
    return embeddings


def contact_sheet(data, out, people: int = 8, pictures: int = 6):
    """A PNG grid: one training identity per row, its first pictures along the row (as many as every row has)."""
    folders = sorted(p for p in (Path(data) / 'train').iterdir() if p.is_dir())[:people]
    pictures = min([pictures] + [len(list(folder.glob('*.jpg'))) for folder in folders])
    rows = [np.hstack([cv2.imread(str(folder.parent / image_path(folder.name, n))) for n in range(1, pictures + 1)])
            for folder in folders]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image
    sheet = Image.fromarray(cv2.cvtColor(np.vstack(rows), cv2.COLOR_BGR2RGB))
    sheet.quantize(256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)  # a palette keeps the PNG small
    return out


def colour_baseline(data, pairs_file: str = 'pairs.txt') -> list[str]:
    """The LFW 10-fold report of colour histograms (of the face region, then of the whole picture) on data/test:
    what verification reaches when only colour is looked at. Raises FileNotFoundError or PairsFormatError."""
    from ..evaluation.lfw import evaluate_embeddings, format_report, read_pairs
    data = Path(data)
    if not (data / 'test').is_dir() or not (data / pairs_file).is_file():
        raise FileNotFoundError(f'{data}: expected test/ and {pairs_file} there')
    pairs = read_pairs(data / pairs_file)
    return [f'colour histograms of the {what}: '
            f'{format_report(evaluate_embeddings(pairs, colour_histogram_embeddings(data / "test", face_only=face)))}'
            for face, what in ((True, 'face region'), (False, 'whole picture'))]
