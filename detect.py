"""Detection on an image, a folder, a video file or a webcam with any of our detector checkpoints (the network is
rebuilt from the checkpoint's `arch`), a Pytorch_Retinaface state dict or an .onnx file from export.py (run by
onnxruntime): annotated images (boxes and scores; five landmarks for faces, class names for RetinaNet), optional txt
results, per-stage timings.

One image or a folder, original size, score > 0.5, NMS IoU 0.4 (results in runs/detect):
    python detect.py --weights runs/retinaface/best.pt --source photos/
A Pytorch_Retinaface state dict (say which backbone), with txt results:
    python detect.py --weights weights/mobilenet0.25_Final.pth --network mobile0.25 --source group.jpg --save-txt
An .onnx file from export.py, run by onnxruntime (CPU; its CUDA provider with --device cuda when installed):
    python detect.py --weights mnet.onnx --source photos/
The authors' released CenterFace, converted (python -m common.models.convert), at their demo's thresholds:
    python detect.py --weights weights/centerface.pt --source photos/ --conf-thres 0.3 --nms-thres 0.3
A folder in batches of 8 (different sizes are padded together), long side capped at 1024, on the GPU:
    python detect.py --weights W --source photos/ --batch-size 8 --max-size 1024 --device cuda
A RetinaNet checkpoint from train_retinanet.py (class names from the checkpoint; each image padded to a square and
resized to the training --size, as its evaluation does; score > 0.5, per-class NMS 0.5, at most 100 objects):
    python detect.py --weights runs/retinanet/best.pt --source street.jpg --save-txt
A video file, or webcam 0 for 300 frames (annotated video written to --out):
    python detect.py --weights W --source clip.mp4
    python detect.py --weights W --source 0 --max-frames 300

--save-txt writes <out>/<stem>.txt per image in the WIDER FACE prediction layout (image name, count, then one face
per line, best first) with the five landmarks after the score: `x y w h score lx1 ly1 ... lx5 ly5`; for RetinaNet
the image name, the count, then `class score x1 y1 x2 y2` per object. An image without detections gets its file
(count 0) and its drawn copy like any other.
Images are read in a background thread, so the network never waits for the disk. On the CPU the network runs with
BatchNorm folded into the convs and in channels_last layout (forward 1.5-2x faster than the plain model,
measured on 1-2 CPU threads; `python bench/detect_speed.py` measures the whole pipeline).
"""
import argparse
import queue
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from common import runtime
from common.checkpoint import CheckpointError
from common.detector import RETINAFACE_NETWORKS, FaceDetector, describe_arch, is_image_file, load_detector_model
from common.evaluation.voc import write_object_file
from common.evaluation.widerface import write_prediction_file
from common.object_detector import ObjectDetector
from common.visualize import draw_detections

VIDEO_SUFFIXES = {'.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg', '.wmv'}
STAGES = ('read', 'preprocess', 'forward', 'postprocess')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    g = parser.add_argument_group('model')
    g.add_argument('--weights', required=True,
                   help='our checkpoint, a Pytorch_Retinaface state dict, or an .onnx file from export.py')
    g.add_argument('--network', default=None, choices=list(RETINAFACE_NETWORKS),
                   help='backbone of a Pytorch_Retinaface state dict (our checkpoints carry their own)')
    g = parser.add_argument_group('data')
    g.add_argument('--source', required=True, help='image, folder of images, video file, or webcam index (0)')
    g.add_argument('--max-size', type=int, default=None, help='faces: cap the long side (default: original size); '
                   'RetinaNet: the square input side (default: the checkpoint\'s training --size)')
    g.add_argument('--batch-size', type=int, default=1, help='images per forward pass (folders and videos)')
    g.add_argument('--max-frames', type=int, default=0, help='stop a video / webcam after N frames (0: all)')
    g = parser.add_argument_group('detection')
    g.add_argument('--conf-thres', type=float, default=0.5, help='keep faces scoring above this')
    g.add_argument('--nms-thres', type=float, default=None, help='NMS IoU threshold (default: 0.4 faces, 0.5 '
                   'RetinaNet, per class)')
    g.add_argument('--top-k', type=int, default=None,
                   help='best candidates per image entering NMS (default: 5000 faces, 1000 RetinaNet; 0: all faces)')
    g.add_argument('--keep-top-k', type=int, default=None,
                   help='most detections kept per image (default: 750 faces, 100 RetinaNet; 0: all)')
    g = parser.add_argument_group('run')
    g.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:N or mps')
    g.add_argument('--out', default='runs/detect', help='folder for annotated images / video and txt results')
    g.add_argument('--save-txt', action='store_true',
                   help='write <out>/<stem>.txt per image (WIDER layout + landmarks)')
    g.add_argument('--no-save', action='store_true', help='do not write annotated images / video')
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f'--batch-size must be at least 1 (got {args.batch_size})')
    return args


# ------------------------------------------------------------------------------------------------------ sources

def read_image(path: Path):
    """BGR uint8 image, or None when the file cannot be decoded (np.fromfile also works for non-ASCII paths)."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    return cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None


def list_source(source: str):
    """('webcam', index) | ('video', path) | ('images', [paths]) for a --source value (the path exists)."""
    if source.isdigit() and not Path(source).exists():
        return 'webcam', int(source)
    path = Path(source)
    if path.is_dir():
        return 'images', sorted(p for p in path.iterdir() if p.is_file())
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return 'video', path
    return 'images', [path]


def image_frames(paths):
    """(name, image or None, reason, read_ms) per file; files that are not images come through with a reason."""
    for path in paths:
        start = time.perf_counter()
        if not is_image_file(path):
            yield path.name, None, 'not an image', 0.0
            continue
        image = read_image(path)
        yield path.name, image, None if image is not None else 'cannot be decoded as an image', \
            (time.perf_counter() - start) * 1000


def video_frames(capture, stem: str, max_frames: int):
    """(name, frame, None, read_ms) per frame of an opened cv2.VideoCapture."""
    index = 0
    try:
        while not max_frames or index < max_frames:
            start = time.perf_counter()
            ok, frame = capture.read()
            if not ok:
                break
            yield f'{stem}_{index:06d}', frame, None, (time.perf_counter() - start) * 1000
            index += 1
    finally:
        capture.release()


def prefetch(items, depth: int):
    """Run the `items` generator in a background thread, `depth` items ahead (OpenCV releases the GIL while it
    decodes, so reading overlaps the forward pass). Errors in the thread are raised here."""
    buffer = queue.Queue(maxsize=max(depth, 1))
    done = object()

    def worker():
        try:
            for item in items:
                buffer.put(item)
        except BaseException as error:  # handed to the consumer, which raises it with its traceback
            buffer.put(error)
        buffer.put(done)

    threading.Thread(target=worker, daemon=True).start()
    while (item := buffer.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def batches(frames, batch_size: int, on_skip):
    """Group readable frames into lists of (name, image, read_ms); unreadable ones go to on_skip(name, reason)."""
    batch = []
    for name, image, reason, read_ms in frames:
        if image is None:
            on_skip(name, reason)
            continue
        batch.append((name, image, read_ms))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


# ------------------------------------------------------------------------------------------------------ pipeline

# the defaults of each kind of detector: the reference demo's for faces, the RetinaNet paper's for objects
DEFAULT_CAPS = {'faces': {'nms_thres': 0.4, 'pre_nms_top_k': 5000, 'keep_top_k': 750},
                'objects': {'nms_thres': 0.5, 'pre_nms_top_k': 1000, 'keep_top_k': 100}}


def build_detector(weights, network, device, *, conf_thres=0.5, nms_thres=None, pre_nms_top_k=None, keep_top_k=None,
                   max_size=None) -> FaceDetector | ObjectDetector:
    """Load the weights (the network is rebuilt from the checkpoint's arch) into a FaceDetector (each image at its
    own size) or, for RetinaNet, an ObjectDetector (each image padded and resized to its square input): BatchNorm
    folded, channels_last on the CPU. Settings left at None take DEFAULT_CAPS for that kind."""
    model, arch = load_detector_model(weights, network, device)
    kind = 'objects' if arch['name'] == 'retinanet' else 'faces'
    given = {'nms_thres': nms_thres, 'pre_nms_top_k': pre_nms_top_k, 'keep_top_k': keep_top_k}
    settings = {k: v if v is not None else DEFAULT_CAPS[kind][k] for k, v in given.items()}
    if kind == 'objects':
        return ObjectDetector(model, arch, device, conf_thres=conf_thres, size=max_size, **settings)
    return FaceDetector(model, arch, device, conf_thres=conf_thres, max_size=max_size, **settings)


def write_results(path: Path, name: str, result: dict, classes):
    """--save-txt: the WIDER FACE layout with landmarks for faces; `class score x1 y1 x2 y2` lines for objects."""
    if classes is None:
        write_prediction_file(path, name, result['boxes'], result['scores'], result.get('landmarks'))
    else:
        write_object_file(path, name, result['boxes'], result['scores'], result['labels'], classes)


def main(args):
    weights = runtime.require_path(args.weights, '--weights', 'weights file')
    kind, what = list_source(args.source)
    if kind != 'webcam':
        runtime.require_path(args.source, '--source', 'image, folder or video')
    out = Path(args.out)
    if kind == 'images' and not args.no_save and any(p.parent.resolve() == out.resolve() for p in what):
        runtime.fail(f'--out {out}: the annotated images would overwrite the --source images there')
    device = runtime.select_device(args.device)
    try:
        detector = build_detector(weights, args.network, device, conf_thres=args.conf_thres,
                                  nms_thres=args.nms_thres, pre_nms_top_k=args.top_k,
                                  keep_top_k=args.keep_top_k, max_size=args.max_size)
    except CheckpointError as e:
        runtime.fail(f'--weights: {e}')
    out.mkdir(parents=True, exist_ok=True)

    writer = None
    fps = 25.0
    if kind == 'images':
        frames = image_frames(what)
    else:
        capture = cv2.VideoCapture(what if kind == 'webcam' else str(what))
        if not capture.isOpened():
            runtime.fail(f'--source {args.source}: cannot open {"webcam" if kind == "webcam" else "video"} {what}')
        fps = capture.get(cv2.CAP_PROP_FPS) or fps
        stem = f'webcam{what}' if kind == 'webcam' else Path(what).stem
        frames = video_frames(capture, stem, args.max_frames)

    skipped = []

    def on_skip(name, reason):
        skipped.append(name)
        print(f'skipping {name}: {reason}', flush=True)

    classes = getattr(detector, 'classes', None)  # object detectors name their labels; face detectors have none
    what_found = 'faces' if classes is None else 'objects'
    runs_on = f'onnxruntime {"/".join(detector.model.providers)}' if weights.suffix.lower() == '.onnx' else device
    if classes is None:
        size = 'original size' if not args.max_size else f'long side <= {args.max_size}'
    else:
        size = f'padded to a square, resized to {detector.size} x {detector.size}'
    print(f'{describe_arch(detector.arch)} on {runs_on}, conf > {args.conf_thres}, NMS {detector.nms_thres}, {size}',
          flush=True)
    totals = dict.fromkeys(STAGES + ('write',), 0.0)
    count = faces = 0
    wall = time.perf_counter()
    try:
        for batch in batches(prefetch(frames, depth=2 * args.batch_size), args.batch_size, on_skip):
            names, images, read_ms = zip(*batch)
            results = detector(list(images))
            times = detector.times
            start = time.perf_counter()
            for name, image, result in zip(names, images, results):
                if args.save_txt:  # every image gets its file, with 0 detections too
                    write_results(out / f'{Path(name).stem}.txt', name, result, classes)
                if not args.no_save:
                    drawn = draw_detections(image, result['boxes'], result['scores'], result.get('landmarks'),
                                            labels=result.get('labels'), names=classes)
                    if kind == 'images':
                        cv2.imwrite(str(out / name), drawn)
                    else:
                        if writer is None:
                            path = out / f'{stem}.mp4'
                            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), fps,
                                                     (drawn.shape[1], drawn.shape[0]))
                        writer.write(drawn)
            times['write'] = (time.perf_counter() - start) * 1000
            times['read'] = sum(read_ms)
            for stage in totals:
                totals[stage] += times[stage]
            for name, result in zip(names, results):
                count += 1
                faces += len(result['boxes'])
                per_image = ' '.join(f'{s} {times[s] / len(batch):.1f}' for s in STAGES)
                print(f'{count} {name}: {len(result["boxes"])} {what_found} ({per_image} ms/image)', flush=True)
    except KeyboardInterrupt:
        print('interrupted', flush=True)
    finally:
        if writer is not None:
            writer.release()
    wall = time.perf_counter() - wall

    if count:
        means = ', '.join(f'{s} {totals[s] / count:.1f}' for s in totals)
        print(f'{count} images, {faces} {what_found} in {wall:.2f} s; mean ms per image: {means} '
              f'(read runs in a background thread, overlapping the rest)')
    else:
        print('no images processed')
    if skipped:
        print(f'{len(skipped)} skipped (not images): {", ".join(skipped[:10])}{" ..." if len(skipped) > 10 else ""}')
    print(f'results in {out}')
    return {'images': count, 'faces': faces, 'skipped': skipped}


if __name__ == '__main__':
    main(parse_args())
