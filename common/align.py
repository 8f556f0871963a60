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

The command aligns a folder of photos for train_recognition.py: every image under --source (a person/image.jpg tree
or a flat folder) is detected at its original size, exactly as detect.py detects it (so its landmarks are
detect.py's), the face the image is of is picked (--pick: the highest-scoring by default), and its crop is written
under --out at the same relative path, with the same extension. Images without a face are listed in
<out>/no_face.txt; unreadable ones are named and skipped.

    python -m common.align --weights weights/retinaface_mobilenet0.25_Final.pth --network mobile0.25 \\
        --source data/lfw --out data/lfw-sphereface --template sphereface          # the released MobileFaceNet
    python -m common.align --weights runs/retinaface/best.pt --source data/people --out data/people-112
    python -m common.align --weights W --source RAW --out ALIGNED --size 128x128     # the tutorial's gray models
    python -m common.align --weights centerface.onnx --source RAW --out ALIGNED --batch-size 8 --device cuda
"""
import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from . import runtime
from .checkpoint import CheckpointError
from .data.images import IMAGE_SUFFIXES, image_files, prefetch, read_image
from .inference.load import build_detector
from .models.retinaface import NETWORKS as RETINAFACE_NETWORKS

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


# ---------------------------------------------------------------------------------------------------- the command


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog='python -m common.align', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    g = parser.add_argument_group('detector')
    g.add_argument('--weights', required=True, help='a face detector with landmarks: our RetinaFace or CenterFace '
                   'checkpoint, a Pytorch_Retinaface state dict, or an .onnx file from export.py')
    g.add_argument('--network', default=None, choices=list(RETINAFACE_NETWORKS),
                   help='backbone of a Pytorch_Retinaface state dict (our checkpoints carry their own)')
    g.add_argument('--conf-thres', type=float, default=0.5, help='faces scoring above this count (detect.py\'s)')
    g.add_argument('--max-size', type=int, default=None, help='cap the long side for detection (default: original '
                   'size; the crop is always cut from the original image)')
    g = parser.add_argument_group('alignment')
    g.add_argument('--source', required=True, help='folder of photos (any tree), or one photo')
    g.add_argument('--out', required=True, help='folder for the crops (the same tree) and no_face.txt')
    g.add_argument('--template', default='arcface', help=f'{" or ".join(TEMPLATES)} (default arcface)')
    g.add_argument('--size', default=None, metavar='WxH',
                   help='crop size (default: the template\'s, 112x112 or 96x112); other sizes: see above')
    g.add_argument('--pick', default='score', help=f'which face an image is of: {", ".join(PICKS)} (default score: '
                   'the highest-scoring)')
    g = parser.add_argument_group('run')
    g.add_argument('--batch-size', type=int, default=1, help='images per forward pass (padded together)')
    g.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:N or mps')
    return parser.parse_args(argv)


def list_images(source: Path) -> list:
    """(relative path, path) of every image under `source` (or of `source` itself), sorted."""
    if source.is_file():
        return [(Path(source.name), source)]
    return [(p.relative_to(source), p) for p in image_files(source)]


def write_image(path: Path, image: np.ndarray):
    """cv2.imencode + tofile: any path (non-ASCII too), in the format its extension names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(path.suffix, image)
    if not ok:
        raise OSError(f'cannot encode an image as {path.suffix}')
    data.tofile(str(path))


def main(argv=None) -> dict:
    args = parse_args(argv)
    weights = runtime.require_path(args.weights, '--weights', 'detector file')
    source = runtime.require_path(args.source, '--source', 'photo folder')
    if args.template not in TEMPLATES:
        runtime.fail(f'--template: unknown template {args.template!r} (use {" or ".join(TEMPLATES)})')
    if args.pick not in PICKS:
        runtime.fail(f'--pick: unknown rule {args.pick!r} (use {", ".join(PICKS)})')
    try:
        size = parse_size(args.size) if args.size else TEMPLATES[args.template][1]
    except ValueError as e:
        runtime.fail(f'--size: {e}')
    if args.batch_size < 1:
        runtime.fail(f'--batch-size: must be at least 1, got {args.batch_size}')
    out = Path(args.out)
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        runtime.fail(f'--out {out}: inside --source {source}; the crops would mix with the photos')
    images = list_images(source)
    if not images:
        runtime.fail(f'--source {source}: no images in it ({" ".join(IMAGE_SUFFIXES)})')
    device = runtime.select_device(args.device)
    try:
        detector = build_detector(weights, args.network, device, conf_thres=args.conf_thres, max_size=args.max_size)
    except CheckpointError as e:
        runtime.fail(f'--weights: {e}')
    if detector.kind != 'faces':
        runtime.fail(f'--weights {weights}: an object detector ({detector.arch.get("name")}); alignment needs a face '
                     f'detector with landmarks (RetinaFace or CenterFace)')

    def read_all():
        for relative, path in images:
            yield relative, read_image(path)

    aligned, no_face, unreadable = 0, [], []
    bar = tqdm(total=len(images), unit='image', desc='aligning', dynamic_ncols=True, file=sys.stdout,
               mininterval=0.5 if sys.stdout.isatty() else 30)  # in a log file: a line per 30 s
    batch = []
    for relative, image in prefetch(read_all(), depth=2 * args.batch_size):  # read ahead in a thread
        if image is None:
            unreadable.append(relative.as_posix())
            bar.write(f'skipping {source / relative}: cannot be decoded as an image')
            bar.update()
            continue
        batch.append((relative, image))
        if len(batch) == args.batch_size:
            aligned += align_batch(batch, detector, out, args.template, size, args.pick, no_face)
            bar.update(len(batch))
            batch = []
    if batch:
        aligned += align_batch(batch, detector, out, args.template, size, args.pick, no_face)
        bar.update(len(batch))
    bar.close()
    out.mkdir(parents=True, exist_ok=True)
    (out / 'no_face.txt').write_text(''.join(f'{p}\n' for p in sorted(no_face)))
    print(f'{len(images)} images: {aligned} aligned ({args.template} template, {size[0]}x{size[1]}) -> {out}; '
          f'{len(no_face)} without a face (listed in {out / "no_face.txt"}); {len(unreadable)} unreadable'
          + (f': {", ".join(unreadable[:5])}{" ..." if len(unreadable) > 5 else ""}' if unreadable else ''))
    return {'images': len(images), 'aligned': aligned, 'no_face': sorted(no_face), 'unreadable': unreadable}


def align_batch(batch, detector, out: Path, template: str, size, pick: str, no_face: list) -> int:
    """Detect the batch's images together, write the picked face's crop of each; returns how many were written."""
    results = detector([image for _, image in batch])
    written = 0
    for (relative, image), result in zip(batch, results):
        index = pick_face(result['boxes'], result['scores'], image.shape[:2], pick)
        if index is None:
            no_face.append(relative.as_posix())
            continue
        write_image(out / relative, crop_face(image, result['landmarks'][index], template, size))
        written += 1
    return written


if __name__ == '__main__':
    main()
