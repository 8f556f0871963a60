"""Tiny synthetic datasets written in the real on-disk formats, so every pipeline runs and tests without downloads.

    python -m common.synthetic widerface --out data/synthetic_widerface --num-images 600 --seed 0
    python -m common.synthetic contact-sheet --data data/synthetic_widerface --out docs/synthetic_widerface.png

Each kind is one function `make_<kind>(out, num_images, seed)` listed in KINDS; the same seed writes the same bytes.

widerface: drawn faces (head, hair, ears, eyes with iris, eyebrows, nose, lips) from 8 to 300 px tall, rotated,
slightly turned (yaw), lit, blurred and partly occluded, on cluttered backgrounds with face-like distractors (plain
skin ellipses, heads without features, backs of heads). Written in the MindFace layout:

    OUT/{train,val}/label.txt               RetinaFace format: '# event/name.jpg', then per face
                                            'x y w h  lx ly 0.0 (x5)  score' (landmarks -1 for ~10% of faces)
    OUT/{train,val}/images/<event>/<name>.jpg
    OUT/ground_truth/wider_{face,easy,medium,hard}_val.mat   the official evaluation structure for val
"""
import argparse
import io
import math
import sys
from pathlib import Path

import cv2
import numpy as np

JPEG_QUALITY = 90
FIXED_POINT = 4                     # cv2 drawing with shift=4: coordinates in 1/16 pixel
FACE_MIN, FACE_MAX = 8, 300         # face box height range in pixels
LANDMARK_MISSING_RATE = 0.10
EMPTY_IMAGE_RATE = 0.05

# Where the five landmarks sit in a frontal face, in units of the face box (w, h) from its centre
# (means over the real WIDER train labels: eyes at 0.31/0.69 x 0.38, nose 0.5 x 0.57, mouth 0.35/0.65 x 0.73).
CANONICAL_LANDMARKS = np.array([[-0.186, -0.116], [0.186, -0.116], [0.0, 0.074], [-0.152, 0.235], [0.152, 0.235]])

SKIN_BGR = np.array([[205, 220, 248], [160, 188, 232], [118, 150, 205], [80, 108, 160], [50, 68, 108], [36, 48, 78]],
                    np.float32)
HAIR_BGR = np.array([[18, 18, 22], [28, 40, 60], [35, 62, 105], [80, 140, 195], [150, 150, 155], [35, 60, 150],
                     [215, 215, 220]], np.float32)
HAIR_WEIGHTS = np.array([0.35, 0.2, 0.15, 0.1, 0.08, 0.05, 0.07])
IRIS_BGR = np.array([[25, 45, 85], [150, 110, 55], [70, 115, 70], [18, 22, 28]], np.float32)


# ----------------------------------------------------------------------------------------------------------------
# drawing helpers


def ellipse_points(cx, cy, a, b, t0=0.0, t1=2 * math.pi, n=36) -> np.ndarray:
    """(n,2) points on an axis-aligned ellipse arc, in whatever units the caller uses."""
    t = np.linspace(t0, t1, n)
    return np.stack([cx + a * np.cos(t), cy + b * np.sin(t)], axis=1)


def random_color(rng, low=0, high=255, saturation=None) -> tuple:
    """A random BGR colour; `saturation` < 1 pulls it towards grey (real scenes are rarely fully saturated)."""
    color = rng.uniform(low, high, 3)
    if saturation is None:
        saturation = rng.uniform(0.2, 0.9)
    color = color.mean() + (color - color.mean()) * saturation
    return tuple(float(v) for v in color)


def skin_color(rng) -> np.ndarray:
    """A skin tone: a random point between neighbouring anchors from light to dark, with a little hue jitter."""
    t = rng.uniform(0, len(SKIN_BGR) - 1)
    i = min(int(t), len(SKIN_BGR) - 2)
    color = SKIN_BGR[i] * (i + 1 - t) + SKIN_BGR[i + 1] * (t - i)
    return np.clip(color * rng.uniform(0.9, 1.1, 3), 0, 255)


class FaceCanvas:
    """A supersampled patch around one face: shapes given in face units are rotated, scaled and drawn anti-aliased.

    The patch covers image pixels [x0, x0+side) x [y0, y0+side); it is drawn `k` times larger and shrunk with
    INTER_AREA, so small faces get proper anti-aliasing. Image pixel centres are at integer coordinates (cv2's
    convention); hi-res coordinate u maps to image coordinate x0 + (u - (k-1)/2) / k.
    """

    def __init__(self, center, w, h, angle_deg, yaw, half_size, k):
        self.center = np.asarray(center, np.float64)
        self.size = np.array([w, h], np.float64)
        self.yaw = yaw
        a = math.radians(angle_deg)
        self.rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        self.k = k
        self.origin = np.round(self.center).astype(int) - half_size
        self.side = 2 * half_size + 1
        self.color = np.zeros((self.side * k, self.side * k, 3), np.uint8)
        self.alpha = np.zeros((self.side * k, self.side * k), np.uint8)

    def to_image(self, points, depth=0.0) -> np.ndarray:
        """Face units (origin at the box centre, x right, y down) -> image pixels. `depth` > 0 moves a feature
        sideways with the yaw (the nose tip most); the whole face is also narrowed a little when turned."""
        p = np.asarray(points, np.float64).copy()
        p[:, 0] = p[:, 0] * (1 - 0.15 * abs(self.yaw)) + self.yaw * depth
        return self.center + (p * self.size) @ self.rotation.T

    def _fixed(self, points, depth) -> np.ndarray:
        hi = (self.to_image(points, depth) - self.origin) * self.k + (self.k - 1) / 2
        return np.round(hi * (1 << FIXED_POINT)).astype(np.int32)

    def fill(self, points, color, depth=0.0, opaque=False):
        pts = [self._fixed(points, depth)]
        cv2.fillPoly(self.color, pts, color, cv2.LINE_AA, FIXED_POINT)
        if opaque:
            cv2.fillPoly(self.alpha, pts, 255, cv2.LINE_AA, FIXED_POINT)

    def line(self, points, color, thickness, depth=0.0, closed=False):
        t = max(1, int(round(thickness * self.size[1] * self.k)))
        cv2.polylines(self.color, [self._fixed(points, depth)], closed, color, t, cv2.LINE_AA, FIXED_POINT)

    def face_coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Face units (u, v) of every pixel of the rendered patch, each (side, side)."""
        ys, xs = np.mgrid[0:self.side, 0:self.side].astype(np.float32)
        d = np.stack([xs + self.origin[0] - self.center[0], ys + self.origin[1] - self.center[1]], -1)
        uv = (d @ self.rotation.astype(np.float32)) / self.size.astype(np.float32)
        return uv[..., 0], uv[..., 1]

    def render(self):
        """(premultiplied colour float32 side x side x 3, alpha float32 side x side) at image resolution."""
        color, alpha = self.color, self.alpha
        if self.k > 1:
            color = cv2.resize(color, (self.side, self.side), interpolation=cv2.INTER_AREA)
            alpha = cv2.resize(alpha, (self.side, self.side), interpolation=cv2.INTER_AREA)
        alpha = alpha.astype(np.float32) / 255
        # drawing on black: colour at anti-aliased edges is already colour * coverage, i.e. premultiplied
        return color.astype(np.float32) * (alpha[..., None] > 0), alpha


def composite(image: np.ndarray, color: np.ndarray, alpha: np.ndarray, x0: int, y0: int):
    """Alpha-blend a premultiplied patch (float) into a float image at (x0, y0), clipped to the image."""
    H, W = image.shape[:2]
    ph, pw = alpha.shape
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + pw, W), min(y0 + ph, H)
    if xa >= xb or ya >= yb:
        return
    a = alpha[ya - y0:yb - y0, xa - x0:xb - x0, None]
    region = image[ya:yb, xa:xb]
    region *= 1 - a
    region += color[ya - y0:yb - y0, xa - x0:xb - x0]


# ----------------------------------------------------------------------------------------------------------------
# one face


def sample_face_style(rng) -> dict:
    """Colours and shapes of one person; geometry jitter keeps the landmark layout realistic but varied."""
    skin = skin_color(rng)
    hair = HAIR_BGR[rng.choice(len(HAIR_BGR), p=HAIR_WEIGHTS)] * rng.uniform(0.8, 1.15)
    return {
        'skin': skin,
        'hair': np.clip(hair, 0, 255),
        'hair_style': rng.choice(['short', 'long', 'bald', 'hat'], p=[0.5, 0.3, 0.1, 0.1]),
        'hairline': rng.uniform(-0.48, -0.3),
        'temples': rng.uniform(0.1, 0.35),
        'iris': IRIS_BGR[rng.integers(len(IRIS_BGR))],
        'eye_spread': rng.uniform(0.92, 1.08),
        'eye_y': rng.uniform(-0.02, 0.02),
        'eye_size': rng.uniform(0.85, 1.2),
        'nose_y': rng.uniform(-0.02, 0.02),
        'mouth_y': rng.uniform(-0.025, 0.025),
        'mouth_width': rng.uniform(0.85, 1.15),
        'mouth_open': rng.random() < 0.2,
        'jaw': rng.uniform(0.0, 0.3),
        'lip': np.clip(skin * np.array([0.62, 0.58, 0.92]) * rng.uniform(0.8, 1.05), 0, 255),
        'beard': rng.random() < 0.1,
        'glasses': rng.choice(['none', 'glasses', 'sunglasses'], p=[0.82, 0.12, 0.06]),
        'hat_color': np.array(random_color(rng)),
    }


def face_landmarks(style: dict) -> np.ndarray:
    """The five landmarks of this face in face units (before yaw and rotation)."""
    lm = CANONICAL_LANDMARKS.copy()
    lm[:2, 0] *= style['eye_spread']
    lm[:2, 1] += style['eye_y']
    lm[2, 1] += style['nose_y']
    lm[3:, 0] *= style['mouth_width']
    lm[3:, 1] += style['mouth_y']
    return lm


LANDMARK_DEPTH = np.array([0.07, 0.07, 0.16, 0.07, 0.07])  # how far each landmark moves sideways with full yaw


def draw_head(canvas: FaceCanvas, style: dict, rng, features: bool = True) -> np.ndarray | None:
    """Draw a head on the canvas; with features, also eyes, brows, nose and mouth. Returns the landmarks in image
    pixels (5,2) exactly where the eyes' centres, the nose tip and the mouth corners were drawn."""
    skin = tuple(float(v) for v in style['skin'])
    hair = tuple(float(v) for v in style['hair'])
    shade = tuple(float(v) for v in style['skin'] * 0.78)
    highlight = tuple(float(v) for v in np.minimum(style['skin'] * 1.08 + 6, 255))
    hair_style = style['hair_style']
    yaw = canvas.yaw

    # hair behind the head (long hair falls below the chin)
    if hair_style == 'long':
        canvas.fill(ellipse_points(0, 0.22, 0.62, 0.78), hair, opaque=True)
    elif hair_style == 'short':
        canvas.fill(ellipse_points(0, -0.08, 0.53, 0.5), hair, opaque=True)
    # neck and ears, then the face
    canvas.fill(np.array([[-0.2, 0.3], [0.2, 0.3], [0.22, 0.75], [-0.22, 0.75]]), shade, opaque=True)
    if abs(yaw) < 0.5 and hair_style != 'long':
        for side in (-1, 1):
            canvas.fill(ellipse_points(side * 0.46, -0.02, 0.065, 0.12), shade, depth=-0.05 * side, opaque=True)
    canvas.fill(face_outline(style['jaw']), skin, opaque=True)
    # hair on top of the forehead / a hat
    top = style['hairline']
    if hair_style in ('short', 'long'):
        canvas.fill(hair_cap(top, style['temples']), hair, opaque=True)
    elif hair_style == 'hat':
        hat = tuple(float(v) for v in style['hat_color'])
        canvas.fill(hair_cap(top, 0.02, 0.53, 0.63), hat, opaque=True)
        canvas.fill(np.array([[-0.6, top - 0.02], [0.6, top - 0.02], [0.6, top + 0.05], [-0.6, top + 0.05]]), hat,
                    opaque=True)
    if not features:
        return None

    lm = face_landmarks(style)
    eye_w, eye_h = 0.085 * style['eye_size'], 0.04 * style['eye_size']
    white = tuple(float(v) for v in np.array([228, 232, 238]) * rng.uniform(0.85, 1.0))
    iris = tuple(float(v) for v in style['iris'])
    lid = tuple(float(v) for v in style['hair'] * 0.5)
    gaze = rng.uniform(-0.2, 0.2) * eye_w
    for i, side in ((0, -1), (1, 1)):
        ex, ey = lm[i]
        narrow = 1 - 0.35 * max(0.0, side * yaw)  # the eye on the side the face turns to looks narrower
        d = LANDMARK_DEPTH[i]
        if style['glasses'] != 'sunglasses':
            canvas.fill(ellipse_points(ex, ey, eye_w * narrow, eye_h), white, d)
            canvas.fill(ellipse_points(ex + gaze, ey, min(0.5 * eye_w, eye_h) * narrow, eye_h), iris, d)
            canvas.fill(ellipse_points(ex + gaze, ey, 0.45 * eye_h * narrow, 0.45 * eye_h), (12, 12, 15), d)
            canvas.line(ellipse_points(ex, ey, eye_w * narrow, eye_h, math.pi, 2 * math.pi, 12), lid, 0.012, d)
        brow = ellipse_points(ex + side * 0.01, ey - 0.055, 0.105 * narrow, 0.03, 1.15 * math.pi, 1.85 * math.pi, 10)
        canvas.line(brow, tuple(float(v) for v in style['hair'] * 0.7), 0.025, d)
    if style['glasses'] == 'sunglasses':
        for i in (0, 1):
            canvas.fill(ellipse_points(lm[i, 0], lm[i, 1], 1.35 * eye_w, 2.0 * eye_h), (20, 20, 25), 0.08)
        canvas.line(np.array([lm[0] + [1.3 * eye_w, -0.02], lm[1] - [1.3 * eye_w, 0.02]]), (20, 20, 25), 0.015, 0.08)
    elif style['glasses'] == 'glasses':
        frame = random_color(rng, 0, 120)
        for i in (0, 1):
            canvas.line(ellipse_points(lm[i, 0], lm[i, 1], 1.45 * eye_w, 2.3 * eye_h), frame, 0.012, 0.08, True)
        canvas.line(np.array([lm[0] + [1.45 * eye_w, 0], lm[1] - [1.45 * eye_w, 0]]), frame, 0.012, 0.08)

    # nose: a shadowed bridge down to the tip, the tip, two nostrils
    nx, ny = lm[2]
    nose_shadow = tuple(float(v) for v in style['skin'] * 0.7)
    canvas.line(np.array([[-0.02, lm[0, 1] + 0.03], [-0.035, ny - 0.04], [-0.05, ny]]), nose_shadow, 0.018, 0.12)
    canvas.fill(ellipse_points(nx, ny - 0.005, 0.05, 0.035), highlight, LANDMARK_DEPTH[2])
    for side in (-1, 1):
        canvas.fill(ellipse_points(nx + side * 0.04, ny + 0.025, 0.022, 0.012), (25, 25, 40), LANDMARK_DEPTH[2] - 0.02)

    # mouth: upper and lower lip between the corners, a dark line (or an open mouth with teeth) between them
    (lx, ly), (rx, ry) = lm[3], lm[4]
    mx, my = (lx + rx) / 2, (ly + ry) / 2
    half = (rx - lx) / 2
    lip = tuple(float(v) for v in style['lip'])
    open_h = 0.05 if style['mouth_open'] else 0.0
    t = np.linspace(-1, 1, 9)
    upper = np.stack([mx + half * t, my - (0.035 + 0.01 * np.cos(t * 3)) * (1 - t ** 2) - open_h / 2], 1)
    lower = np.stack([mx + half * t[::-1], my + (0.05 + open_h / 2) * (1 - t[::-1] ** 2)], 1)
    mouth_depth = LANDMARK_DEPTH[3]
    canvas.fill(np.concatenate([upper, lower]), lip, mouth_depth)
    middle = np.stack([mx + half * t, my + 0.008 * (1 - t ** 2)], 1)
    if style['mouth_open']:
        inner = np.concatenate([middle[1:-1] - [0, open_h / 2 + 0.005], middle[-2:0:-1] + [0, open_h / 2 + 0.01]])
        canvas.fill(inner, (30, 25, 50), mouth_depth)
        canvas.fill(np.array([[mx - half * 0.55, my - open_h / 2 - 0.005], [mx + half * 0.55, my - open_h / 2 - 0.005],
                              [mx + half * 0.5, my - open_h / 2 + 0.02], [mx - half * 0.5, my - open_h / 2 + 0.02]]),
                    (215, 225, 230), mouth_depth)
    else:
        canvas.line(middle, (40, 30, 60), 0.012, mouth_depth)
    if style['beard']:
        beard = np.concatenate([ellipse_points(0, 0.1, 0.44, 0.42, 0.05 * math.pi, 0.95 * math.pi, 20),
                                [[lx - 0.03, ly + 0.04], [mx, my + 0.07], [rx + 0.03, ry + 0.04]]])
        canvas.fill(beard, hair, 0.03)
    return canvas.to_image(lm, LANDMARK_DEPTH)


def face_outline(jaw: float, n: int = 48) -> np.ndarray:
    """The face: an ellipse from forehead to chin whose lower half narrows towards the chin by `jaw`."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    narrowing = 1 - jaw * np.clip(np.sin(t), 0, None) ** 2
    return np.stack([0.46 * np.cos(t) * narrowing, -0.04 + 0.56 * np.sin(t)], 1)


def hair_cap(hairline, temples, a=0.5, b=0.6) -> np.ndarray:
    """Polygon of the hair covering the top of the head: a slightly enlarged head ellipse above the hairline
    y = hairline + temples * (x / 0.46)^2 (the hair comes lower at the temples)."""
    t = np.linspace(0.5 * math.pi, 2.5 * math.pi, 73)  # from the chin, up the left side, over the top, down the right
    arc = np.stack([a * np.cos(t), -0.04 + b * np.sin(t)], 1)
    arc = arc[arc[:, 1] < hairline + temples * (arc[:, 0] / 0.46) ** 2]
    x = np.linspace(arc[-1, 0], arc[0, 0], 12)
    return np.concatenate([arc, np.stack([x, hairline + temples * (x / 0.46) ** 2], 1)])


def face_box(center, w, h, angle_deg) -> np.ndarray:
    """Axis-aligned box x1,y1,x2,y2 around the face ellipse (ear to ear, forehead to chin) after rotation."""
    a = math.radians(angle_deg)
    half_w = math.hypot(w / 2 * math.cos(a), h / 2 * math.sin(a))
    half_h = math.hypot(w / 2 * math.sin(a), h / 2 * math.cos(a))
    return np.array([center[0] - half_w, center[1] - half_h, center[0] + half_w, center[1] + half_h])


# ----------------------------------------------------------------------------------------------------------------
# one image


def draw_background(rng, height, width) -> np.ndarray:
    """Clutter: a colour gradient, blotchy low-frequency noise, random rectangles, circles, polygons and lines."""
    # gradient and blotches are smooth: build them at 1/8 size and enlarge (much cheaper than full-size float maths)
    small_h, small_w = height // 8 + 1, width // 8 + 1
    c0, c1 = np.array(random_color(rng, 20, 235)), np.array(random_color(rng, 20, 235))
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.arange(small_w)[None, :] * math.cos(angle) + np.arange(small_h)[:, None] * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    base = c0 + ramp[..., None] * (c1 - c0)
    grid = rng.uniform(-1, 1, (rng.integers(3, 12), rng.integers(3, 12), 3)).astype(np.float32)
    base += cv2.resize(grid, (small_w, small_h), interpolation=cv2.INTER_CUBIC) * rng.uniform(10, 45)
    image = cv2.resize(np.clip(base, 0, 255).astype(np.uint8), (width, height), interpolation=cv2.INTER_LINEAR)
    for _ in range(rng.integers(4, 25)):
        color = random_color(rng)
        kind = rng.integers(4)
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(8, max(9, min(height, width) // 2)))
        thick = -1 if rng.random() < 0.6 else int(rng.integers(1, 6))
        if kind == 0:
            cv2.rectangle(image, (x, y), (x + size, y + int(size * rng.uniform(0.2, 2))), color, thick, cv2.LINE_AA)
        elif kind == 1:
            cv2.circle(image, (x, y), size // 2, color, thick, cv2.LINE_AA)
        elif kind == 2:
            pts = (np.array([x, y]) + rng.uniform(-size, size, (int(rng.integers(3, 7)), 2))).astype(np.int32)
            cv2.fillPoly(image, [pts], color, cv2.LINE_AA)
        else:
            end = (x + int(rng.integers(-width, width)), y + int(rng.integers(-height, height)))
            cv2.line(image, (x, y), end, color, int(rng.integers(1, 8)), cv2.LINE_AA)
    if rng.random() < 0.3:  # stripes, like fences, shelves or text lines
        period = int(rng.integers(6, 30))
        stripe = (np.arange(height if rng.random() < 0.5 else width) // period) % 2
        shade = rng.uniform(0.75, 0.95)
        factor = np.where(stripe, shade, 1.0).astype(np.float32)
        image = (image * (factor[:, None, None] if len(factor) == height else factor[None, :, None])).astype(np.uint8)
    return image


def draw_torso(image, rng, center, w, h, angle_deg):
    """Shoulders and chest below a head, drawn straight into the image before the heads (they never cover one)."""
    a = math.radians(angle_deg * 0.5)
    down = np.array([-math.sin(a), math.cos(a)])
    c = np.asarray(center) + down * 1.45 * h
    axes = (max(1, int(w * rng.uniform(0.95, 1.3) * 16)), max(1, int(h * 0.75 * 16)))
    cv2.ellipse(image, tuple(np.round(c * 16).astype(int)), axes, angle_deg * 0.5, 0, 360, random_color(rng, 10, 240),
                -1, cv2.LINE_AA, FIXED_POINT)


def place_faces(rng, height, width, count, low, high, taken):
    """Centres and sizes of up to `count` faces whose surroundings do not overlap each other (rejection sampling)."""
    faces = []
    for _ in range(count * 15):
        if len(faces) == count:
            break
        h = math.exp(rng.uniform(math.log(low), math.log(high)))
        w = h * rng.uniform(0.72, 0.9)
        angle = float(np.clip(rng.normal(0, 12), -40, 40))
        center = np.array([rng.uniform(0.6 * w, width - 0.6 * w), rng.uniform(0.6 * h, height - 0.6 * h)])
        box = face_box(center, w, h, angle)
        if box[0] < 0 or box[1] < 0 or box[2] > width - 1 or box[3] > height - 1:
            continue
        # the head with its hair reaches beyond the face box; keep heads apart
        head = np.array([center[0] - 0.65 * h, center[1] - 0.75 * h, center[0] + 0.65 * h, center[1] + 0.7 * h])
        if any(head[0] < t[2] and t[0] < head[2] and head[1] < t[3] and t[1] < head[3] for t in taken):
            continue
        taken.append(head)
        faces.append((center, w, h, angle))
    return faces


SCENES = {  # name: (probability, face count range, face height range)
    'portrait': (0.2, (1, 3), (60, FACE_MAX)),
    'group': (0.3, (3, 9), (18, 120)),
    'crowd': (0.2, (8, 16), (FACE_MIN, 40)),
    'mixed': (0.3, (1, 10), (FACE_MIN, FACE_MAX)),
}


def make_face_image(rng) -> tuple[np.ndarray, list[dict]]:
    """One synthetic photo and its faces: dicts with box (x1,y1,x2,y2 float), landmarks (5,2), and the
    occlusion / blur / illumination / pose / expression levels the .mat ground truth records."""
    height, width = int(rng.integers(320, 641)), int(rng.integers(320, 641))
    image = draw_background(rng, height, width)
    taken: list[np.ndarray] = []
    faces = []
    if rng.random() >= EMPTY_IMAGE_RATE:
        names = list(SCENES)
        scene = SCENES[names[rng.choice(len(names), p=[SCENES[n][0] for n in names])]]
        count = int(rng.integers(scene[1][0], scene[1][1] + 1))
        high = min(scene[2][1], 0.6 * min(height, width))
        faces = place_faces(rng, height, width, count, min(scene[2][0], high), high, taken)
    # distractors: skin ellipses, heads without features, backs of heads; they take space like faces do
    distractors = place_faces(rng, height, width, int(rng.integers(0, 5)), 12, min(160, 0.5 * min(height, width)),
                              taken)
    people = faces + distractors
    for center, w, h, angle in people:
        if rng.random() < 0.8:
            draw_torso(image, rng, center, w, h, angle)

    canvas_image = image.astype(np.float32)
    records = []
    for index, (center, w, h, angle) in enumerate(people):
        record = draw_person(canvas_image, rng, center, w, h, angle, is_face=index < len(faces))
        if record is not None:
            records.append(record)
    image = np.clip(canvas_image, 0, 255).astype(np.uint8)

    for record in records:  # occluders: a hand, a sign, another object over part of the face
        if rng.random() < 0.15 and record['box'][3] - record['box'][1] >= 12:
            record['occlusion'] = draw_occluder(image, rng, record['box'])
    return finish_photo(image, rng), records


def draw_person(image, rng, center, w, h, angle, is_face=True) -> dict | None:
    """Draw one head into a float image: a face (returns its record) or, with is_face False, a distractor
    (a plain skin-coloured ellipse, a head without features, or the back of a head; returns None)."""
    style = sample_face_style(rng)
    yaw = float(np.clip(rng.normal(0, 0.3), -0.7, 0.7))
    if not is_face:
        kind = rng.integers(3)
        if kind == 0:
            style['hair_style'] = 'bald'
        elif kind == 2:
            style['skin'] = style['hair']
    k = int(np.clip(math.ceil(64 / h), 1, 8))  # supersampling factor: small faces are drawn at >= 64 px
    canvas = FaceCanvas(center, w, h, angle, yaw, int(math.ceil(1.15 * max(w, h))), k)
    landmarks = draw_head(canvas, style, rng, features=is_face)
    color, alpha = canvas.render()
    # lighting: overall brightness, a light direction, and darker towards the rim of the head (roundness)
    light = rng.uniform(0.45, 1.15) if rng.random() < 0.3 else rng.uniform(0.8, 1.05)
    gx, gy = rng.uniform(-0.6, 0.6, 2)
    u, v = canvas.face_coords()
    rim = (u / 0.5) ** 2 + ((v + 0.04) / 0.6) ** 2
    color *= (light * (1 + gx * u + gy * v) * (1.08 - 0.3 * np.minimum(rim, 1.3) ** 2)).clip(0.25, 1.6)[..., None]
    blur = int(rng.choice(3, p=[0.65, 0.27, 0.08]))
    if blur:
        sigma = h * (0.015 if blur == 1 else 0.04) + 0.4
        color, alpha = cv2.GaussianBlur(color, (0, 0), sigma), cv2.GaussianBlur(alpha, (0, 0), sigma)
    composite(image, color, alpha, *canvas.origin)
    if not is_face:
        return None
    # drawing puts pixel centres at integers; labels use continuous coordinates (pixel i spans [i, i+1)) like
    # common.transforms, hence the half pixel
    return {'box': face_box(center, w, h, angle) + 0.5, 'landmarks': landmarks + 0.5, 'blur': blur,
            'illumination': int(light < 0.6), 'expression': int(style['mouth_open']),
            'pose': int(abs(angle) > 25 or abs(yaw) > 0.45), 'occlusion': 0}


def draw_occluder(image, rng, box) -> int:
    """Cover 20-55% of the face box from one side; returns the WIDER occlusion level (1 partial, 2 heavy)."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    part = rng.uniform(0.2, 0.55)
    side = rng.integers(4)
    margin = 0.15
    if side == 0:
        rect = (x1 - margin * w, y1 - margin * h, x1 + part * w, y2 + margin * h)
    elif side == 1:
        rect = (x2 - part * w, y1 - margin * h, x2 + margin * w, y2 + margin * h)
    elif side == 2:
        rect = (x1 - margin * w, y2 - part * h, x2 + margin * w, y2 + margin * h)
    else:
        rect = (x1 - margin * w, y1 - margin * h, x2 + margin * w, y1 + part * h)
    pts = np.round(np.array(rect) * 16).astype(int)
    cv2.rectangle(image, (pts[0], pts[1]), (pts[2], pts[3]), random_color(rng), -1, cv2.LINE_AA, FIXED_POINT)
    return 1 if part < 0.35 else 2


def finish_photo(image, rng) -> np.ndarray:
    """Camera effects over the whole picture: colour cast, contrast, sensor noise, sometimes blur."""
    contrast = rng.uniform(0.75, 1.2)
    gains = contrast * rng.uniform(0.9, 1.1, 3)
    offsets = (128 - 128 * contrast + rng.uniform(-20, 20)) * np.ones(3)
    out = cv2.transform(image, np.concatenate([np.diag(gains), offsets[:, None]], 1))  # per-channel affine, saturating
    if rng.random() < 0.15:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 1.2))
    noise = np.empty(out.shape, np.int16)
    cv2.setRNGSeed(int(rng.integers(2 ** 31)))  # OpenCV's generator, seeded from ours: fast and reproducible
    cv2.randn(noise, 0, float(rng.uniform(1, 6)))
    return cv2.add(out, noise, dtype=cv2.CV_8U)


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
# contact sheet (docs/synthetic_widerface.png) and the command line


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

    from .datasets import parse_retinaface_labels
    from .visualize import draw_detections

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


# kind name -> make_<kind>(out, num_images, seed); the other kinds add their writer here
KINDS = {
    'widerface': make_widerface,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m common.synthetic', description=__doc__.split('\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    for kind, make in KINDS.items():
        sub = commands.add_parser(kind, help=(make.__doc__ or '').split('\n')[0])
        sub.add_argument('--out', required=True, help='output folder')
        sub.add_argument('--num-images', type=int, default=600, help='number of (train) images')
        sub.add_argument('--seed', type=int, default=0, help='same seed, same bytes')
    sheet = commands.add_parser('contact-sheet', help='PNG grid of a synthetic WIDER FACE folder with its labels')
    sheet.add_argument('--data', required=True, help='folder written by the widerface kind')
    sheet.add_argument('--out', required=True, help='PNG path, e.g. docs/synthetic_widerface.png')
    args = parser.parse_args(argv)
    if args.command == 'contact-sheet':
        if not (Path(args.data) / 'train' / 'label.txt').is_file():
            print(f'error: --data {args.data}: no train/label.txt there (write one with the widerface kind)',
                  file=sys.stderr)
            return 2
        print(f'wrote {contact_sheet(args.data, args.out)}')
        return 0
    if args.num_images < 1:
        print(f'error: --num-images must be at least 1, got {args.num_images}', file=sys.stderr)
        return 2
    print(f'wrote {KINDS[args.command](args.out, args.num_images, args.seed)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
