"""Drawing synthetic photos with faces whose five landmarks are known exactly: the pictures of the synthetic WIDER
FACE set (common/synthetic/widerface.py writes them in the real formats).

`make_face_image(rng)` gives one photo and its face records. Faces are drawn (head, hair, ears, eyes with iris,
eyebrows, nose, lips) from 8 to 300 px tall, rotated, slightly turned (yaw), lit, blurred and partly occluded, with
the landmark points (eye centres, nose tip, mouth corners) where the features are drawn; the background is clutter
with face-like distractors (plain skin ellipses, heads without features, backs of heads), so a detector must learn
the features, not colour blobs. All randomness comes from the numpy Generator passed in: same generator state, same
pixels.
"""
import math

import cv2
import numpy as np

FIXED_POINT = 4                     # cv2 drawing with shift=4: coordinates in 1/16 pixel
FACE_MIN, FACE_MAX = 8, 300         # face box height range in pixels
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
    # common.data.transforms, hence the half pixel
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
