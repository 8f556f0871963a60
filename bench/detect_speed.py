"""Speed of the whole detect.py pipeline per image against baselines measured in the same run.

    python bench/detect_speed.py --weights ../shared/data/weights/retinaface_mobilenet0.25_Final.pth \
        --network mobile0.25 --source ../shared/data/photos --device cpu [--max-size S] [--repeats R] [--threads T]
    python bench/detect_speed.py --weights runs/centerface/best.pt --compare \
        ../shared/data/weights/retinaface_mobilenet0.25_Final.pth --compare-network mobile0.25 \
        --source ../shared/data/photos --device cpu --max-size 640
An .onnx file from export.py through onnxruntime, beside the PyTorch weights it was exported from (and, for
RetinaFace, the reference-style baseline built from them):
    python bench/detect_speed.py --weights mnet.onnx --pytorch-weights \
        ../shared/data/weights/retinaface_mobilenet0.25_Final.pth --network mobile0.25 --source ../shared/data/photos

Per image, every pipeline reads the file, prepares the input, runs the network, decodes and applies NMS, one image
at a time, after a warm-up pass over the folder; the pipelines take turns pass by pass over the folder and the
median over images x repeats is reported.

- ours: detect.py's pipeline for --weights (BatchNorm folded, channels_last on the CPU, batched torch decode +
  torchvision NMS); for an .onnx file the network runs in onnxruntime, the rest is the same.
- pytorch: with an .onnx --weights, detect.py's PyTorch pipeline for --pytorch-weights (the checkpoint it was
  exported from).
- reference-style baseline, for RetinaFace weights: the reference implementation's steps, written here: the mean
  subtracted in NumPy, the plain (unfused) network on that float32 image, priors rebuilt per image by a Python loop
  over the cells, decode in NumPy, score filter, argsort, top-k, a greedy NMS loop in Python/NumPy (+1 pixel
  areas), keep top-k. The run also checks that the two agree (matched boxes and landmarks in pixels, scores).
- compare: detect.py's pipeline for more detectors (--compare, .onnx files too), at the same input size: e.g.
  CenterFace against RetinaFace MobileNet0.25.

All use the same thresholds (default: the reference's test settings, score > 0.02, NMS 0.4, top 5000 / 750; a
RetinaNet checkpoint from train_retinanet.py: per-class NMS 0.5, top 1000 / 100, its square training input). On
CUDA it adds the batch throughput of detect.py's batched path. It prints `speedup: X.Xx` (baseline / ours),
`speedup_over_pytorch: X.Xx` (pytorch / ours) and `ratio_compare_over_ours: X.Xx` where those pipelines ran, and
last `median_ms_per_image: X` (ours). onnxruntime runs with as many threads as torch (--threads).
"""
import argparse
import itertools
import math
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from common import runtime  # noqa: E402
from common.checkpoint import CheckpointError  # noqa: E402
from common.data.images import is_image_file, read_image  # noqa: E402
from common.inference.detectors import synchronize  # noqa: E402
from common.inference.load import build_detector, describe_arch, load_detector_model  # noqa: E402
from common.inference.onnx_model import INT8_KEY, read_metadata  # noqa: E402
from common.models.backbones import BGR_MEAN  # noqa: E402
from common.models.retinaface import NETWORKS as RETINAFACE_NETWORKS  # noqa: E402


# ------------------------------------------------------------------------------- the reference-style baseline

def loop_priors(height, width, min_sizes=((16, 32), (64, 128), (256, 512)), steps=(8, 16, 32)):
    """Priors built cell by cell in Python, as the reference does for every image."""
    values = []
    for sizes, step in zip(min_sizes, steps):
        for i, j in itertools.product(range(math.ceil(height / step)), range(math.ceil(width / step))):
            for size in sizes:
                values += [(j + 0.5) * step / width, (i + 0.5) * step / height, size / width, size / height]
    return np.array(values, dtype=np.float32).reshape(-1, 4)


def loop_nms(dets, threshold):
    """Greedy NMS: take the best box, drop the ones overlapping it (+1 pixel areas), repeat."""
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        best = order[0]
        keep.append(best)
        w = np.maximum(0.0, np.minimum(x2[best], x2[order[1:]]) - np.maximum(x1[best], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[best], y2[order[1:]]) - np.maximum(y1[best], y1[order[1:]]) + 1)
        inter = w * h
        overlap = inter / (areas[best] + areas[order[1:]] - inter)
        order = order[1:][overlap <= threshold]
    return keep


@torch.no_grad()
def baseline_detect(model, path, device, conf_thres, nms_thres, top_k, keep_top_k, max_size):
    """One image through the reference-style pipeline -> (N, 15) x1 y1 x2 y2 score + 10 landmark coordinates, and
    the stage times in ms."""
    start = time.perf_counter()
    image = cv2.imread(str(path))
    scale = 1.0
    if max_size and max(image.shape[:2]) > max_size:
        scale = max_size / max(image.shape[:2])
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    height, width = image.shape[:2]
    image = np.float32(image)
    image -= BGR_MEAN
    tensor = torch.from_numpy(image.transpose(2, 0, 1)).unsqueeze(0)
    prepared = time.perf_counter()
    loc, conf, landm = model.forward_normalized(tensor.to(device))
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    forwarded = time.perf_counter()
    priors = loop_priors(height, width)

    loc, landm, logits = loc[0].cpu().numpy(), landm[0].cpu().numpy(), conf[0].cpu().numpy()
    scores = 1.0 / (1.0 + np.exp(logits[:, 0] - logits[:, 1]))  # softmax, face column
    centre = priors[:, :2] + loc[:, :2] * 0.1 * priors[:, 2:]
    size = priors[:, 2:] * np.exp(loc[:, 2:] * 0.2)
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1) * np.array([width, height] * 2) / scale
    points = np.concatenate([priors[:, :2] + landm[:, 2 * k:2 * k + 2] * 0.1 * priors[:, 2:] for k in range(5)], 1)
    points = points * np.array([width, height] * 5) / scale

    keep = np.where(scores > conf_thres)[0]
    boxes, points, scores = boxes[keep], points[keep], scores[keep]
    order = scores.argsort()[::-1][:top_k]
    boxes, points, scores = boxes[order], points[order], scores[order]
    dets = np.hstack((boxes, scores[:, None])).astype(np.float32)
    keep = loop_nms(dets, nms_thres)
    dets = np.concatenate((dets[keep], points[keep]), axis=1)[:keep_top_k]
    done = time.perf_counter()
    times = {'read+preprocess': (prepared - start) * 1000, 'forward': (forwarded - prepared) * 1000,
             'postprocess (priors, decode, NMS)': (done - forwarded) * 1000}
    return dets, times


# ------------------------------------------------------------------------------------------------ comparison

def compare(ours: dict, reference: np.ndarray):
    """Match each reference detection to our box of highest IoU -> (count difference, unmatched, max box / landmark
    difference in px, max score difference) over the matched pairs."""
    mine = np.concatenate([ours['boxes'], ours['scores'][:, None], ours['landmarks'].reshape(-1, 10)], 1)
    if len(reference) == 0 or len(mine) == 0:
        return len(mine) - len(reference), max(len(reference), len(mine)), 0.0, 0.0, 0.0
    a, b = reference[:, None, :4], mine[None, :, :4]
    inter = (np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2])).clip(min=0).prod(-1)
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    iou = inter / (area(a) + area(b) - inter)
    best = iou.argmax(1)
    matched = iou[np.arange(len(reference)), best] > 0.9
    pairs_ref, pairs_mine = reference[matched], mine[best[matched]]
    box = np.abs(pairs_ref[:, :4] - pairs_mine[:, :4]).max(initial=0)
    landmarks = np.abs(pairs_ref[:, 5:] - pairs_mine[:, 5:]).max(initial=0)
    score = np.abs(pairs_ref[:, 4] - pairs_mine[:, 4]).max(initial=0)
    return len(mine) - len(reference), int((~matched).sum()), float(box), float(landmarks), float(score)


# ------------------------------------------------------------------------------------------------------ main

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--weights', required=True, help='detector to time (any of our checkpoints, a '
                        'Pytorch_Retinaface state dict with --network, or an .onnx file from export.py)')
    parser.add_argument('--network', default=None, choices=list(RETINAFACE_NETWORKS),
                        help='backbone of a Pytorch_Retinaface state dict (--weights or --pytorch-weights)')
    parser.add_argument('--pytorch-weights', default=None,
                        help='with an .onnx --weights: the PyTorch weights it was exported from, timed beside it')
    parser.add_argument('--compare', default=None, nargs='+', help='more detectors timed through the same '
                        'pipeline, e.g. RetinaFace beside a CenterFace checkpoint')
    parser.add_argument('--compare-network', default=None, choices=list(RETINAFACE_NETWORKS),
                        help='backbone of the --compare files that are Pytorch_Retinaface state dicts')
    parser.add_argument('--source', required=True, help='folder of images')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--max-size', type=int, default=None,
                        help='cap the long side, the same for every pipeline (default: original size)')
    parser.add_argument('--repeats', type=int, default=3, help='timed passes over the folder')
    parser.add_argument('--conf-thres', type=float, default=0.02)
    parser.add_argument('--nms-thres', type=float, default=None, help='default: 0.4 faces, 0.5 RetinaNet')
    parser.add_argument('--batch-size', type=int, default=8, help='batch for the CUDA throughput measurement')
    parser.add_argument('--threads', type=int, default=0,
                        help='CPU threads for torch (0: its default); 1 gives steadier numbers on a busy machine')
    return parser.parse_args(argv)


def median_ms(values):
    return statistics.median(values) if values else float('nan')


def arch_name(arch: dict, weights=None) -> str:
    """How a pipeline is labelled in the output, e.g. 'retinaface mobile0.25', 'centerface 1.0',
    'onnxruntime centerface released' or 'onnxruntime int8 retinaface mobile0.25'."""
    if weights is None or Path(weights).suffix.lower() != '.onnx':
        return describe_arch(arch)
    return f'onnxruntime {"int8 " if INT8_KEY in read_metadata(weights) else ""}{describe_arch(arch)}'


def detector_pipeline(detector):
    """detect.py's per-image steps: read the file, then the FaceDetector (prepare, forward, decode, NMS)."""
    def run(path):
        start = time.perf_counter()
        image = read_image(path)
        read = (time.perf_counter() - start) * 1000
        result = detector([image])[0]
        return result, (time.perf_counter() - start) * 1000, {'read': read, **detector.times}
    return run


def reference_pipeline(model, device, args):
    def run(path):
        start = time.perf_counter()
        dets, times = baseline_detect(model, path, device, args.conf_thres, args.nms_thres or 0.4, 5000, 750,
                                      args.max_size)
        return dets, (time.perf_counter() - start) * 1000, times
    return run


def batch_throughput(detector, paths, batch_size, device):
    """Images per second of detect.py's batched path (files read beforehand); bench/cuda_run.py runs it on the CPU
    too."""
    images = [read_image(p) for p in paths]
    batch = images * max(1, batch_size // len(images) + 1)
    detector(batch[:batch_size])
    synchronize(device)
    start, count = time.perf_counter(), 0
    for i in range(0, len(batch) * 4, batch_size):
        detector([batch[(i + k) % len(batch)] for k in range(batch_size)])
        count += batch_size
    synchronize(device)
    return count / (time.perf_counter() - start)


def main(args):
    weights = runtime.require_path(args.weights, '--weights', 'weights file')
    source = runtime.require_path(args.source, '--source', 'image folder')
    paths = sorted(p for p in source.iterdir() if p.is_file() and is_image_file(p)) if source.is_dir() else [source]
    if not paths:
        runtime.fail(f'--source: no images in {source}')
    device = runtime.select_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    # caps: detect.py's defaults of each kind (faces 5000 / 750, the reference's demo; RetinaNet 1000 / 100)
    settings = dict(conf_thres=args.conf_thres, nms_thres=args.nms_thres, max_size=args.max_size)
    is_onnx = weights.suffix.lower() == '.onnx'
    torch_weights = weights  # the PyTorch weights behind the pytorch and baseline pipelines (None: neither runs)
    if is_onnx:
        torch_weights = args.pytorch_weights and runtime.require_path(args.pytorch_weights, '--pytorch-weights',
                                                                      'weights file')
    elif args.pytorch_weights:
        runtime.fail('--pytorch-weights: only with an .onnx --weights (the PyTorch weights it was exported from)')
    try:
        detector = build_detector(weights, args.network, device, **settings)
        pipelines = {f'ours ({arch_name(detector.arch, weights)})': detector_pipeline(detector)}
        if is_onnx and torch_weights:
            in_torch = build_detector(torch_weights, args.network, device, **settings)
            if in_torch.arch != detector.arch:
                runtime.fail(f'--pytorch-weights: a {in_torch.arch} network, the .onnx file holds {detector.arch}')
            pipelines[f'pytorch ({arch_name(in_torch.arch)})'] = detector_pipeline(in_torch)
        if detector.arch['name'] == 'retinaface' and torch_weights:  # the reference's steps exist for RetinaFace
            plain_model, _ = load_detector_model(torch_weights, args.network, device)
            pipelines['reference-style baseline'] = reference_pipeline(plain_model, device, args)
        for path in args.compare or []:
            compared = build_detector(runtime.require_path(path, '--compare', 'weights file'),
                                      args.compare_network, device, **settings)
            pipelines[f'compare ({arch_name(compared.arch, path)})'] = detector_pipeline(compared)
    except CheckpointError as e:
        runtime.fail(f'--weights/--pytorch-weights/--compare: {e}')
    print(f'{len(paths)} images from {source}, {device}, {torch.get_num_threads()} CPU threads, '
          f'{"original size" if not args.max_size else f"long side <= {args.max_size}"}, '
          f'score > {args.conf_thres}, NMS {detector.nms_thres}, top {detector.pre_nms_top_k} / {detector.keep_top_k}')

    for run in pipelines.values():  # warm-up: allocator, oneDNN / cuDNN kernels for every size
        for path in paths:
            run(path)
    totals = {name: [] for name in pipelines}
    stages = {name: {} for name in pipelines}
    last = {}
    for _ in range(args.repeats):
        # pipelines take turns pass by pass, so load from other processes hits them alike; not image by image,
        # where each would evict the other's oneDNN kernels from the caches and run slower than it does alone
        for name, run in pipelines.items():
            for path in paths:
                result, ms, times = run(path)
                totals[name].append(ms)
                for k, v in times.items():
                    stages[name].setdefault(k, []).append(v)
                last.setdefault(path.name, {})[name] = result

    ours_name, *others = pipelines
    if 'reference-style baseline' in pipelines:
        worst = [0, 0, 0.0, 0.0, 0.0]
        for name, results in last.items():
            result, dets = results[ours_name], results['reference-style baseline']
            count_diff, unmatched, box, landmarks, score = compare(result, dets)
            print(f'{name}: ours {len(result["boxes"])} faces, baseline {len(dets)}; unmatched {unmatched}, '
                  f'max diff box {box:.3f} px, landmarks {landmarks:.3f} px, score {score:.5f}')
            worst = [max(abs(count_diff), worst[0]), max(unmatched, worst[1]), max(box, worst[2]),
                     max(landmarks, worst[3]), max(score, worst[4])]
        print(f'agreement: max count difference {worst[0]}, unmatched {worst[1]}, box {worst[2]:.3f} px, '
              f'landmarks {worst[3]:.3f} px, score {worst[4]:.5f}')

    if device.type == 'cuda':
        print(f'batch {args.batch_size} throughput (no file reading): '
              f'{batch_throughput(detector, paths, args.batch_size, device):.1f} images/s')

    for name in pipelines:
        print(f'{name}: median {median_ms(totals[name]):.1f} ms/image; per stage (median ms): '
              + ', '.join(f'{k} {median_ms(v):.1f}' for k, v in stages[name].items()))
    ours_ms = median_ms(totals[ours_name])
    for name in others:
        label = {'reference-style baseline': 'speedup', 'pytorch': 'speedup_over_pytorch'}.get(
            name.split(' (')[0], 'ratio_compare_over_ours')
        print(f'{label}: {median_ms(totals[name]) / ours_ms:.2f}x  ({name} / {ours_name})')
    print(f'median_ms_per_image: {ours_ms:.1f}')


if __name__ == '__main__':
    main(parse_args())
