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
Who is in the photos: a recognizer (our recognition checkpoint, its .onnx, or the released MobileFaceNet file) and a
gallery, one folder per person with a few photos (aligned with the same detector at start, their embeddings cached
in --out); each face is named after the person of the most similar gallery photo when the cosine similarity
reaches --match-thres, else "unknown" (common/gallery.py):
    python detect.py --weights W --recognizer mobilefacenet_068.ckpt --gallery people/ --source photos/ --save-txt

--save-txt writes <out>/<stem>.txt per image in the WIDER FACE prediction layout (image name, count, then one face
per line, best first) with the five landmarks after the score: `x y w h score lx1 ly1 ... lx5 ly5`; for RetinaNet
the image name, the count, then `class score x1 y1 x2 y2` per object. An image without detections gets its file
(count 0) and its drawn copy like any other. With --gallery each face line ends with one more column, the name
(spaces in it written as _).
Images are read in a background thread, so the network never waits for the disk. On the CPU the network runs with
BatchNorm folded into the convs and in channels_last layout (forward 1.5-2x faster than the plain model,
measured on 1-2 CPU threads; `python bench/detect_speed.py` measures the whole pipeline).
"""
import argparse
import time
from pathlib import Path

import cv2

from common import runtime
from common.align import crop_face
from common.checkpoint import CheckpointError
from common.data.images import is_image_file, prefetch, read_image
from common.evaluation.voc import write_object_file
from common.evaluation.widerface import write_prediction_file
from common.gallery import MATCH_THRESHOLD, Gallery, GalleryError
from common.inference.load import build_detector, describe_arch
from common.inference.recognizer import load_recognizer
from common.models.retinaface import NETWORKS as RETINAFACE_NETWORKS
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
    g = parser.add_argument_group('recognition')
    g.add_argument('--recognizer', default=None, help='recognition model: our checkpoint, its .onnx, or the released '
                   'MobileFaceNet file (needs --gallery)')
    g.add_argument('--gallery', default=None, help='folder with one folder of photos per known person')
    g.add_argument('--match-thres', type=float, default=MATCH_THRESHOLD,
                   help='cosine similarity a face needs to be named (else "unknown")')
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

class Source:
    """What --source names, read frame by frame: `frames` yields (name, BGR image or None, why not, read ms);
    `is_video` says whether the output is one annotated video (a file or a webcam) or a drawn copy per image."""

    def __init__(self, source: str, max_frames: int = 0):
        self.is_video, self.fps, self.stem = False, 25.0, None
        if source.isdigit() and not Path(source).exists():  # a webcam index
            self.capture, self.stem, self.is_video = cv2.VideoCapture(int(source)), f'webcam{source}', True
        else:
            path = runtime.require_path(source, '--source', 'image, folder or video')
            if path.suffix.lower() in VIDEO_SUFFIXES:
                self.capture, self.stem, self.is_video = cv2.VideoCapture(str(path)), path.stem, True
            else:
                self.paths = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        if self.is_video:
            if not self.capture.isOpened():
                runtime.fail(f'--source {source}: cannot open {"webcam" if source.isdigit() else "video"} {source}')
            self.fps = self.capture.get(cv2.CAP_PROP_FPS) or self.fps
        self.max_frames = max_frames

    def frames(self):
        return self._video_frames() if self.is_video else self._image_frames()

    def _image_frames(self):
        for path in self.paths:
            start = time.perf_counter()
            if not is_image_file(path):
                yield path.name, None, 'not an image', 0.0
                continue
            image = read_image(path)
            yield path.name, image, None if image is not None else 'cannot be decoded as an image', \
                (time.perf_counter() - start) * 1000

    def _video_frames(self):
        index = 0
        try:
            while not self.max_frames or index < self.max_frames:
                start = time.perf_counter()
                ok, frame = self.capture.read()
                if not ok:
                    break
                yield f'{self.stem}_{index:06d}', frame, None, (time.perf_counter() - start) * 1000
                index += 1
        finally:
            self.capture.release()


def batches(frames, batch_size: int, skipped: list):
    """Group readable frames into lists of (name, image, read_ms); unreadable ones are named and added to skipped."""
    batch = []
    for name, image, reason, read_ms in frames:
        if image is None:
            skipped.append(name)
            print(f'skipping {name}: {reason}', flush=True)
            continue
        batch.append((name, image, read_ms))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


# ------------------------------------------------------------------------------------------------------ outputs

class Outputs:
    """Where results go under --out: a drawn copy per image (or one annotated video) and, with --save-txt, a txt
    file per image: the WIDER FACE layout with landmarks for faces, `class score x1 y1 x2 y2` lines for objects."""

    def __init__(self, out: Path, source: Source, detector, save_images: bool, save_txt: bool):
        self.out, self.source = out, source
        self.classes = detector.classes if detector.kind == 'objects' else None  # names drawn beside the boxes
        self.save_images, self.save_txt, self.video = save_images, save_txt, None

    def write(self, name: str, image, result: dict):
        if self.save_txt:  # every image gets its file, with 0 detections too
            path = self.out / f'{Path(name).stem}.txt'
            if self.classes is None:
                write_prediction_file(path, name, result['boxes'], result['scores'], result.get('landmarks'),
                                      names=result.get('names'))
            else:
                write_object_file(path, name, result['boxes'], result['scores'], result['labels'], self.classes)
        if not self.save_images:
            return
        captions = [f'{n} {s:.2f}' for n, s in zip(result['names'], result['similarity'])] if 'names' in result \
            else None
        drawn = draw_detections(image, result['boxes'], result['scores'], result.get('landmarks'),
                                labels=result.get('labels'), names=self.classes, captions=captions)
        if not self.source.is_video:
            cv2.imwrite(str(self.out / name), drawn)
            return
        if self.video is None:
            self.video = cv2.VideoWriter(str(self.out / f'{self.source.stem}.mp4'), cv2.VideoWriter_fourcc(*'mp4v'),
                                         self.source.fps, (drawn.shape[1], drawn.shape[0]))
        self.video.write(drawn)

    def close(self):
        if self.video is not None:
            self.video.release()


# ------------------------------------------------------------------------------------------------------ names

def load_gallery(args, weights: Path, detector, device):
    """(recognizer, gallery) for --recognizer and --gallery, or (None, None) without them."""
    if not args.recognizer and not args.gallery:
        return None, None
    if not (args.recognizer and args.gallery):
        runtime.fail(f'{"--gallery" if args.recognizer else "--recognizer"} is needed too: naming faces takes a '
                     f'recognizer and a gallery of known people')
    if detector.kind != 'faces':
        runtime.fail(f'--recognizer: {weights} is an object detector; naming faces needs a face detector')
    path = runtime.require_path(args.recognizer, '--recognizer', 'recognition model')
    runtime.require_path(args.gallery, '--gallery', 'gallery folder')
    try:
        recognizer = load_recognizer(path, device)
    except CheckpointError as e:
        runtime.fail(f'--recognizer: {e}')
    try:
        gallery = Gallery.build(args.gallery, detector, recognizer, cache_dir=args.out, model_files=[path, weights])
    except GalleryError as e:
        runtime.fail(f'--gallery: {e}')
    print(f'gallery {args.gallery}: {len(gallery)} people, {len(gallery.photos)} photos ({gallery.from_cache} from the '
          f'cache in {args.out}); a face is named at cosine similarity >= {args.match_thres}', flush=True)
    return recognizer, gallery


def name_faces(image, result: dict, recognizer, gallery, threshold: float):
    """Align every face of the image, embed them in one batch, and add their 'names' and 'similarity' to result."""
    crops = [crop_face(image, points, recognizer.template, recognizer.size) for points in result['landmarks']]
    result['names'], result['similarity'] = gallery.identify(recognizer(crops), threshold)


# ------------------------------------------------------------------------------------------------------ main

def main(args):
    weights = runtime.require_path(args.weights, '--weights', 'weights file')
    source = Source(args.source, args.max_frames)
    out = Path(args.out)
    if not source.is_video and not args.no_save and any(p.parent.resolve() == out.resolve() for p in source.paths):
        runtime.fail(f'--out {out}: the annotated images would overwrite the --source images there')
    device = runtime.select_device(args.device)
    try:
        detector = build_detector(weights, args.network, device, conf_thres=args.conf_thres,
                                  nms_thres=args.nms_thres, pre_nms_top_k=args.top_k,
                                  keep_top_k=args.keep_top_k, max_size=args.max_size)
    except CheckpointError as e:
        runtime.fail(f'--weights: {e}')
    out.mkdir(parents=True, exist_ok=True)
    recognizer, gallery = load_gallery(args, weights, detector, device)
    outputs = Outputs(out, source, detector, not args.no_save, args.save_txt)
    found_what = detector.kind  # 'faces' or 'objects'
    runs_on = device
    if weights.suffix.lower() == '.onnx':
        runs_on = f'onnxruntime {"/".join(detector.model.providers)}{", int8" if detector.model.int8 else ""}'
    if detector.kind == 'faces':
        size = 'original size' if not args.max_size else f'long side <= {args.max_size}'
    else:
        size = f'padded to a square, resized to {detector.size} x {detector.size}'
    print(f'{describe_arch(detector.arch)} on {runs_on}, conf > {args.conf_thres}, NMS {detector.nms_thres}, {size}',
          flush=True)

    # detect, draw, write: a batch at a time, the next images read in a background thread meanwhile
    totals = dict.fromkeys(STAGES + (('recognize',) if gallery else ()) + ('write',), 0.0)
    count, found, skipped, identities = 0, 0, [], {}
    wall = time.perf_counter()
    try:
        for batch in batches(prefetch(source.frames(), depth=2 * args.batch_size), args.batch_size, skipped):
            names, images, read_ms = zip(*batch)
            results = detector(list(images))
            times = detector.times
            start = time.perf_counter()
            if gallery is not None:
                for image, result in zip(images, results):
                    name_faces(image, result, recognizer, gallery, args.match_thres)
                times['recognize'] = (time.perf_counter() - start) * 1000
                start = time.perf_counter()
            for name, image, result in zip(names, images, results):
                outputs.write(name, image, result)
            times['write'] = (time.perf_counter() - start) * 1000
            times['read'] = sum(read_ms)
            for stage in totals:
                totals[stage] += times.get(stage, 0.0)
            for name, result in zip(names, results):
                count += 1
                found += len(result['boxes'])
                per_image = ' '.join(f'{s} {times[s] / len(batch):.1f}' for s in STAGES + ('recognize',) if s in times)
                who = '' if 'names' not in result else ': ' + ', '.join(
                    f'{n} {s:.2f}' for n, s in zip(result['names'], result['similarity']))
                print(f'{count} {name}: {len(result["boxes"])} {found_what} ({per_image} ms/image){who}', flush=True)
                if 'names' in result:
                    identities[name] = list(zip(result['names'], result['similarity'].tolist()))
    except KeyboardInterrupt:
        print('interrupted', flush=True)
    finally:
        outputs.close()
    wall = time.perf_counter() - wall

    if count:
        means = ', '.join(f'{s} {totals[s] / count:.1f}' for s in totals)
        print(f'{count} images, {found} {found_what} in {wall:.2f} s; mean ms per image: {means} '
              f'(read runs in a background thread, overlapping the rest)')
    else:
        print('no images processed')
    if skipped:
        print(f'{len(skipped)} skipped (not images): {", ".join(skipped[:10])}{" ..." if len(skipped) > 10 else ""}')
    print(f'results in {out}')
    return {'images': count, found_what: found, 'skipped': skipped, **({'names': identities} if gallery else {})}


if __name__ == '__main__':
    main(parse_args())
