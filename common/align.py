"""Face alignment: five detected landmarks mapped onto a template by a similarity transform, the face cut out with it.

Landmarks are in the order our detectors give them: left eye, right eye, nose tip, left mouth corner, right mouth
corner ("left" = the image's left). Two templates, (x, y) in the crop's pixels:
- arcface: 112 x 112, insightface's (its .rec / .bin data, our `rgb112` and `gray128` recognition inputs);
- sphereface: 96 wide x 112 high, the same points 8 px to the left (SphereFace, the released MobileFaceNet).

Other crop sizes (`template_points(name, (W, H))`):
- W x H a whole multiple k of the template's own size (224 x 224, 192 x 224): the points times k;
- arcface at a square multiple of 128 (128 x 128, the recognition tutorial's size): insightface's rule, the points
  at the 112 scale times S / 128, shifted right by 8 * S / 128 (the face keeps its size; the extra 16 columns are
  split left and right, the extra 16 rows go below the chin);
- any other W x H: the points scaled by r = min(W / w, H / h) of the template's w x h, the scaled template centred
  in the crop (so sphereface at 112 x 112 is exactly arcface at 112 x 112).

The transform is the least-squares similarity (one scale, a rotation, a shift; never a reflection) from the detected
points to the template's (Umeyama 1991), and the crop is cv2.warpAffine with bilinear interpolation and a black
border, as insightface's norm_crop cuts it.
"""
import cv2
import numpy as np

# (x, y) of the five landmarks in a 112 x 112 crop (insightface's ArcFace template)
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                        [70.7299, 92.2041]], np.float64)
# name -> (points, (width, height)): the template at its own size
TEMPLATES = {
    'arcface': (ARCFACE_112, (112, 112)),
    'sphereface': (ARCFACE_112 - [8.0, 0.0], (96, 112)),
}
# each face an image may hold, how `pick_face` chooses the one the image is "of"
PICKS = ('score', 'largest', 'central')


def parse_size(text: str) -> tuple[int, int]:
    """'96x112' -> (96, 112) (width, height); one number means a square. ValueError for anything else."""
    parts = text.lower().replace('*', 'x').split('x')
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f'expected a crop size WxH such as 112x112 or 96x112, got {text!r}')
    return int(parts[0]), int(parts[1])


def template_points(name: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """(5, 2) float64 template points of template `name` for a crop of `size` = (width, height) (default: the
    template's own size); the rules for other sizes are in the module docstring."""
    if name not in TEMPLATES:
        raise ValueError(f'unknown template {name!r} (use {" or ".join(TEMPLATES)})')
    points, (w, h) = TEMPLATES[name]
    width, height = size or (w, h)
    if width * h == height * w and width % w == 0:  # a whole multiple of the template's size
        return points * (width // w)
    if name == 'arcface' and width == height and width % 128 == 0:
        ratio = width / 128
        return points * ratio + [8.0 * ratio, 0.0]
    ratio = min(width / w, height / h)
    return points * ratio + [(width - w * ratio) / 2, (height - h * ratio) / 2]


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2 x 3 matrix [s R | t] of the similarity (scale s > 0, rotation R, shift t) minimising
    sum_i |s R source_i + t - target_i|^2 (Umeyama 1991). A reflection would sometimes fit better (a mirrored face);
    the sign correction keeps R a rotation, so the crop is never mirrored."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    mean_source, mean_target = source.mean(0), target.mean(0)
    a, b = source - mean_source, target - mean_target
    covariance = b.T @ a / len(source)             # 2 x 2, target by source
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:   # the best orthogonal fit is a reflection: flip the weakest axis
        sign[-1] = -1
    rotation = u @ np.diag(sign) @ vt
    variance = (a ** 2).sum() / len(source)
    scale = (singular * sign).sum() / variance if variance > 0 else 1.0
    shift = mean_target - scale * rotation @ mean_source
    return np.hstack([scale * rotation, shift[:, None]])


def crop_face(image: np.ndarray, landmarks: np.ndarray, template: str = 'arcface',
              size: tuple[int, int] | None = None) -> np.ndarray:
    """The aligned crop (H, W, C) of one face: `landmarks` (5, 2) in image pixels mapped onto `template` at
    `size` = (width, height) (default: the template's own size), bilinear, black outside the image."""
    points = template_points(template, size)
    width, height = size or TEMPLATES[template][1]
    matrix = similarity_transform(np.asarray(landmarks, np.float64).reshape(5, 2), points)
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)


def pick_face(boxes: np.ndarray, scores: np.ndarray, image_hw: tuple[int, int], rule: str = 'score') -> int | None:
    """Index of the face an image is "of" among its detections (boxes (N, 4) x1 y1 x2 y2), or None when N = 0:
    'score' the highest-scoring face (the detector's best), 'largest' the largest box area, 'central' the box
    whose centre is nearest the image's centre. Ties go to the earlier (better-scoring) detection."""
    if rule not in PICKS:
        raise ValueError(f'unknown face pick rule {rule!r} (use {", ".join(PICKS)})')
    if len(boxes) == 0:
        return None
    boxes = np.asarray(boxes, np.float64)
    if rule == 'score':
        return int(np.argmax(scores))
    if rule == 'largest':
        return int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    height, width = image_hw
    return int(np.argmin(((centres - [width / 2, height / 2]) ** 2).sum(1)))
