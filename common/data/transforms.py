"""Face detection augmentations: boxes AND landmarks move with the pixels (NumPy / OpenCV, one image at a time).

The RetinaFace training recipe, in its order: random square crop -> photometric distortion -> pad to square ->
horizontal flip (left/right landmarks swapped) -> resize with a random interpolation.

Coordinates are continuous pixel coordinates (pixel i spans [i, i+1)), as in the reference: a crop at (l, t)
subtracts (l, t), a flip maps x to W - x, a resize multiplies by the scale. A sample is `(image, target)` with
image BGR uint8 HxWx3 and target {'boxes' (N,4) float32 x1y1x2y2, 'landmarks' (N,5,2) float32,
'landmark_valid' (N,) bool, ...}; other keys (name) pass through.
"""
import cv2
import numpy as np

from ..models.backbones import BGR_MEAN  # padding colour: zero after the detector subtracts its mean

CROP_SCALES = (0.3, 0.45, 0.6, 0.8, 1.0)  # crop side as a fraction of the image's short side
INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_LANCZOS4)
FLIP_ORDER = [1, 0, 2, 4, 3]              # left eye <-> right eye, left mouth corner <-> right mouth corner
FACE_KEYS = ('boxes', 'landmarks', 'landmark_valid')
OBJECT_KEYS = FACE_KEYS + ('labels', 'difficult')  # per-object arrays; box-only targets (VOC) lack the landmarks


def select_faces(target: dict, keep: np.ndarray) -> dict:
    """The target with only the faces (objects) where `keep` is True (other keys untouched)."""
    out = dict(target)
    for key in OBJECT_KEYS:
        if key in target:
            out[key] = target[key][keep]
    return out


def random_square_crop(image, target, rng, scales=CROP_SCALES, tries: int = 250, clip_boxes: bool = True,
                       whole_face: bool = False):
    """Crop a square of scale x short side at a random place, keeping the faces whose centre lies inside
    (boxes clipped to the crop unless `clip_boxes` is False, landmarks shifted). A crop is taken when it keeps at
    least one face, with `whole_face` only when at least one face lies wholly inside it (the reference's rule);
    an image without faces takes the first crop. After `tries` refused attempts the image comes back whole.
    Returns (image, target, cropped)."""
    height, width = image.shape[:2]
    boxes = target['boxes']
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    for _ in range(tries):
        side = int(rng.choice(scales) * min(height, width))
        if side < 1:
            continue
        left = int(rng.integers(0, width - side + 1))
        top = int(rng.integers(0, height - side + 1))
        inside = ((centres[:, 0] > left) & (centres[:, 0] < left + side)
                  & (centres[:, 1] > top) & (centres[:, 1] < top + side))
        if whole_face:
            enclosed = ((boxes[:, 0] >= left) & (boxes[:, 1] >= top)
                        & (boxes[:, 2] <= left + side) & (boxes[:, 3] <= top + side))
            if len(boxes) and not enclosed.any():
                continue
        if len(boxes) and not inside.any():
            continue
        out = select_faces(target, inside)
        offset = np.array([left, top], np.float32)
        boxes = out['boxes'].reshape(-1, 2, 2)
        if clip_boxes:
            boxes = np.clip(boxes, offset, offset + side)
        out['boxes'] = (boxes - offset).reshape(-1, 4)
        if 'landmarks' in out:
            out['landmarks'] = np.where(out['landmark_valid'][:, None, None], out['landmarks'] - offset, 0)
            out['landmarks'] = out['landmarks'].astype(np.float32)
        return image[top:top + side, left:left + side], out, True
    return image, target, False


def photometric_distort(image, rng) -> np.ndarray:
    """Random brightness (+-32), contrast (0.5-1.5), saturation (0.5-1.5) and hue (+-18 of OpenCV's 180), each
    applied with probability 1/2; contrast comes either before or after the colour changes."""
    out = image.astype(np.float32)

    def brightness_contrast(out, contrast_now: bool):
        if rng.random() < 0.5:
            out += rng.uniform(-32, 32)
        if contrast_now and rng.random() < 0.5:
            out *= rng.uniform(0.5, 1.5)
        return out

    contrast_first = rng.random() < 0.5
    out = brightness_contrast(out, contrast_first)
    saturate, shift_hue = rng.random() < 0.5, rng.random() < 0.5
    if saturate or shift_hue:
        hsv = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_BGR2HSV).astype(np.float32)
        if saturate:
            hsv[..., 1] *= rng.uniform(0.5, 1.5)
        if shift_hue:
            hsv[..., 0] = (hsv[..., 0] + rng.integers(-18, 19)) % 180
        out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)
    if not contrast_first and rng.random() < 0.5:
        out *= rng.uniform(0.5, 1.5)
    return np.clip(out, 0, 255).astype(np.uint8)


def pad_to_square(image, fill=BGR_MEAN) -> np.ndarray:
    """Place the image at the top-left of a square of its long side filled with `fill` (coordinates unchanged)."""
    height, width = image.shape[:2]
    side = max(height, width)
    if height == width:
        return image
    out = np.empty((side, side, 3), np.uint8)
    out[:] = np.asarray(fill, np.uint8)
    out[:height, :width] = image
    return out


def horizontal_flip(image, target):
    """Mirror left-right: x -> W - x for boxes and landmarks; left/right eyes and mouth corners swap places."""
    width = image.shape[1]
    out = dict(target)
    boxes = target['boxes']
    out['boxes'] = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
    if 'landmarks' in target:
        landmarks = target['landmarks'][:, FLIP_ORDER].copy()
        landmarks[..., 0] = np.where(target['landmark_valid'][:, None], width - landmarks[..., 0], 0)
        out['landmarks'] = landmarks
    return np.ascontiguousarray(image[:, ::-1]), out


def scale_target(target, scale) -> dict:
    """Multiply boxes and landmarks by `scale` (a float or (sx, sy))."""
    sx, sy = (scale, scale) if np.isscalar(scale) else scale
    out = dict(target)
    out['boxes'] = (target['boxes'] * np.array([sx, sy, sx, sy], np.float32)).astype(np.float32)
    if 'landmarks' in target:
        out['landmarks'] = (target['landmarks'] * np.array([sx, sy], np.float32)).astype(np.float32)
    return out


def resize_square(image, target, size: int, rng):
    """A square image resized to size x size with an interpolation drawn from INTERPOLATIONS (the reference's last
    augmentation step), its boxes and landmarks scaled with it."""
    scale = size / image.shape[0]
    interpolation = INTERPOLATIONS[rng.integers(len(INTERPOLATIONS))]
    return cv2.resize(image, (size, size), interpolation=interpolation), scale_target(target, scale)


class TrainTransform:
    """The RetinaFace training augmentation, `transform(image, target, rng) -> (image image_size^2 uint8, target)`.

    `rng` is a numpy Generator the dataset makes for each sample from (seed, epoch, index), so the draws do not
    depend on which worker loads the sample, and a resumed run repeats them. `clip_boxes=False` keeps the whole box
    of a face the crop cuts (its centre is inside): a detector that regresses the box size from the centre
    (CenterFace) then learns the true size of faces larger than its training input, as it meets them at test time,
    instead of the clipped size.
    """

    def __init__(self, image_size: int = 640, crop_scales=CROP_SCALES, crop_tries: int = 250, flip: bool = True,
                 distort: bool = True, fill=BGR_MEAN, clip_boxes: bool = True, whole_face: bool = False):
        self.image_size = image_size
        self.whole_face = whole_face
        self.crop_scales = tuple(crop_scales)
        self.crop_tries = crop_tries
        self.flip = flip
        self.distort = distort
        self.fill = fill
        self.clip_boxes = clip_boxes

    def __call__(self, image, target, rng: np.random.Generator):
        image, target, _ = random_square_crop(image, target, rng, self.crop_scales, self.crop_tries,
                                             self.clip_boxes, self.whole_face)
        if self.distort:
            image = photometric_distort(image, rng)
        image = pad_to_square(image, self.fill)
        if self.flip and rng.random() < 0.5:
            image, target = horizontal_flip(image, target)
        image, target = resize_square(image, target, self.image_size, rng)
        boxes = target['boxes']
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # clipping can leave empty boxes
        return image, select_faces(target, keep)
