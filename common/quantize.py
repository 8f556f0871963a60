"""Static int8 quantization of a detector exported by export.py, with onnxruntime: weights int8 per output channel,
activations uint8 per tensor with ranges calibrated on images that go through exactly detect.py's preprocessing, at
the sizes it feeds them; the file is written only when its detections on those images agree with the fp32 file's.

    report = quantize_detector('mnet.onnx', 'mnet_int8.onnx', 'data/widerface/val/images', images=100)

How (each choice measured on the shared RetinaFace MobileNet0.25 with bench/int8_configs.py; docs/deployment.md,
"int8"):
- Calibration inputs: the fp32 file runs through the detector detect.py builds (FaceDetector: each image at its own
  size, stretched to multiples of 32 for the released CenterFace; ObjectDetector: letterboxed square), and every input
  it hands onnxruntime is recorded; the calibration sees those inputs, nothing rewritten here.
- Which nodes stay fp32 ('auto'): none first; when that drifts past the tolerance, the stem: the nodes on the plain
  chain from the input to the first tensor that two layers read (MobileNet0.25's first stage, which the FPN's first
  level takes; the ResNet's 7 x 7 conv). Its depthwise filters amplify the rounding of 8-bit inputs (everything int8
  cost RetinaFace 0.06 Easy / Medium AP, the stem fp32 0.002), and on an AVX2 CPU its int8 kernels (few channels,
  depthwise) are slower than fp32's.
  When the stem is not enough, the stem and the heads: the convs the outputs are read from (RetinaNet's class and box
  output convs; all int8, our RetinaNet drifted 0.91, with the stem 0.91, with the stem and heads 0.04).
- QOperator format (QDQ gave the same outputs and speed, and refuses weights shared by several convs, as RetinaNet's
  towers are), uint8 activations (int8 ones: 0.4x the fp32 speed on x86), MinMax ranges (Entropy and Percentile:
  the same AP within the noise of ten images, 3x the time), full-range weights (reduce_range: no faster, no better).

The drift check: the fp32 and the int8 file each detect on the calibration images (score > 0.02, detect.py's caps),
and the int8 detections are scored, with the VOC AP code, against the fp32 file's confident detections (score >= 0.5,
detect.py's threshold; for an undertrained model with fewer of them than there are images, its that many best) as the
ground truth, per class for object detectors. drift = 1 - that AP: 0 when the int8 file finds every confident fp32
detection (IoU > 0.5) and ranks nothing new above them, so it moves with what AP measures (missed faces, new false
ones, boxes moved off, scores reordered) and needs no labels. Measured on RetinaFace: drift 0.003 kept WIDER AP within
0.002, drift 0.02 lost 0.017 Medium AP, drift 0.11 lost 0.06.
"""
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError
from .data.images import image_files, read_image
from .evaluation.voc import evaluate_class
from .inference.load import build_detector
from .inference.onnx_model import INPUT_NAME, INT8_KEY, read_metadata

CONFIDENT = 0.5              # the fp32 detections that count as the truth: detect.py's default threshold
CANDIDATES = 0.02            # the int8 detections scored against them: the evaluation's threshold
DEFAULT_TOLERANCE = 0.01
METHODS = ('minmax', 'entropy', 'percentile')
ACTIVATIONS = ('Relu', 'LeakyRelu', 'Clip', 'PRelu', 'HardSwish', 'HardSigmoid', 'Sigmoid', 'Tanh')


class QuantizationRefused(RuntimeError):
    """The int8 file drifts from the fp32 file past the tolerance, or the drift cannot be measured; nothing written."""


def calibration_paths(folder, limit: int | None = None) -> list[Path]:
    """The image files under `folder` (recursively, sorted); `limit` of them spread evenly over that order (so every
    event folder of a WIDER-like tree takes part), all when there are fewer."""
    paths = image_files(folder)
    if limit and len(paths) > limit:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]
    return paths


def stem_nodes(model) -> list[str]:
    """Names of the nodes on the plain chain from the graph input to the first tensor that two nodes read (Shape
    nodes, which read only the size, do not count), up to its last conv and that conv's activation: a pooling
    after it (the ResNet stem's) stays int8, where it is cheap."""
    readers = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    chain, tensor = [], model.graph.input[0].name
    while True:
        data_readers = [node for node in readers.get(tensor, []) if node.op_type != 'Shape']
        if len(data_readers) != 1 or len(data_readers[0].output) != 1:
            break
        chain.append(data_readers[0])
        tensor = data_readers[0].output[0]
    convs = [i for i, node in enumerate(chain) if node.op_type == 'Conv']
    end = convs[-1] + 1 if convs else 0
    if end < len(chain) and chain[end].op_type in ACTIVATIONS:
        end += 1
    return [node.name for node in chain[:end]]


def head_nodes(model) -> list[str]:
    """Names of the convs that write the network's outputs: walking back from each graph output through the nodes
    that only move values (reshape, transpose, concatenate), the first conv on each path (RetinaNet's class and box
    output convs at every level, RetinaFace's 1x1 heads). Logits and offsets read straight from them, so their
    rounding lands in every score and box."""
    producer = {out: node for node in model.graph.node for out in node.output}
    movers = {'Reshape', 'Transpose', 'Concat', 'Flatten', 'Squeeze', 'Unsqueeze', 'Identity'}
    found, todo, seen = [], [o.name for o in model.graph.output], set()
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == 'Conv':
            found.append(node.name)
        elif node.op_type in movers:
            todo += [name for name in node.input[:1 if node.op_type != 'Concat' else None]]
    return found


class _RecordingSession:
    """Stands in for an OnnxModel's onnxruntime session: runs it and keeps every input it is fed (as uint8 when
    that loses nothing: detectors feed whole pixel values), so calibration sees exactly what the network sees."""

    def __init__(self, session):
        self.session, self.inputs = session, []

    def run(self, names, feed):
        self.inputs.append({k: _compact(v) for k, v in feed.items()})
        return self.session.run(names, feed)


def _compact(pixels: np.ndarray) -> np.ndarray:
    as_uint8 = pixels.astype(np.uint8)
    return as_uint8 if np.array_equal(as_uint8, pixels) else pixels.copy()


class _Inputs:
    """onnxruntime's CalibrationDataReader over recorded inputs; `set_range` lets it take them in chunks."""

    def __init__(self, inputs):
        self.inputs = inputs
        self.set_range(0, len(inputs))

    def __len__(self):
        return len(self.inputs)

    def set_range(self, start_index, end_index):
        self._next = iter(self.inputs[start_index:end_index])

    def get_next(self):
        feed = next(self._next, None)
        return None if feed is None else {k: v.astype(np.float32) for k, v in feed.items()}


def detect_all(detector, images) -> list[dict]:
    """One image per call, as detect.py runs a folder by default (each image at its own size)."""
    return [detector([image])[0] for image in images]


def confident_threshold(reference: list[dict], images: int) -> float:
    """The score from which the fp32 detections count as the truth: CONFIDENT, or lower for a model that finds fewer
    such detections than there are `images` (an undertrained one), so that its drift can still be measured: the score
    of its `images`-th best detection over all images (its lowest when it has fewer)."""
    scores = np.sort(np.concatenate([r['scores'] for r in reference] + [np.zeros(0)]))[::-1]
    if (scores >= CONFIDENT).sum() >= images or not len(scores):
        return CONFIDENT
    return float(scores[min(images, len(scores)) - 1])


def agreement(reference: list[dict], candidate: list[dict], confident: float = CONFIDENT) -> tuple[float, int]:
    """(AP, count): `candidate`'s detections scored against `reference`'s detections scoring >= `confident` as the
    ground truth (VOC rules, IoU > 0.5, all-point AP; per label and averaged over the labels the reference has for
    object detectors), and how many reference detections that truth holds."""
    labelled = bool(reference) and 'labels' in reference[0]

    def flat(results, keep):
        """(image index, boxes, scores, labels) of the kept detections of all images, concatenated."""
        index, boxes, scores, labels = [], [], [], []
        for i, result in enumerate(results):
            kept = keep(result)
            index.append(np.full(int(kept.sum()), i))
            boxes.append(result['boxes'][kept].reshape(-1, 4))
            scores.append(result['scores'][kept])
            labels.append(result['labels'][kept] if labelled else np.zeros(int(kept.sum()), int))
        return [np.concatenate(parts) if parts else np.zeros(0) for parts in (index, boxes, scores, labels)]

    gt_image, gt_boxes, _, gt_labels = flat(reference, lambda r: r['scores'] >= confident)
    image, boxes, scores, labels = flat(candidate, lambda r: np.ones(len(r['scores']), bool))
    aps = []
    for label in np.unique(gt_labels):
        mine, theirs = labels == label, gt_labels == label
        aps.append(evaluate_class(image[mine].astype(int), scores[mine], boxes[mine].reshape(-1, 4),
                                  gt_image[theirs].astype(int), gt_boxes[theirs].reshape(-1, 4),
                                  np.zeros(int(theirs.sum()), bool))['ap'])
    return (float(np.mean(aps)) if aps else float('nan')), len(gt_labels)


@contextmanager
def _quiet_quantizer():
    """onnxruntime's quantizer logs a warning per shape tensor it leaves alone and asks for a pre-processing pass
    (measured: it changes neither speed nor outputs of our files); its errors still come through."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def quantize_detector(fp32_path, out_path, calibration_dir, *, images: int | None = 100,
                      tolerance: float | None = DEFAULT_TOLERANCE, keep_fp32='auto', method: str = 'minmax',
                      quant_format: str = 'qoperator', activations: str = 'uint8', reduce_range: bool = False,
                      log=print) -> dict:
    """Quantize the fp32 detector file `fp32_path` into `out_path` (see the module docstring) and return the report
    recorded in its metadata under INT8_KEY. `keep_fp32`: 'auto' (every node int8; if that drifts past the tolerance,
    the stem in fp32; then the stem and the heads), 'stem', or the names of the nodes to keep in fp32 ([]: none).
    `method`, `quant_format` ('qoperator' | 'qdq'), `activations` ('uint8' | 'int8') and `reduce_range` are there to
    measure the alternatives. Raises QuantizationRefused (nothing written) when the drift exceeds `tolerance` or the
    fp32 file finds nothing confident to compare with; `tolerance` None measures and records the drift, never refuses.
    CheckpointError for a file that is not one of our fp32 exports, FileNotFoundError for a folder without readable
    images."""
    import onnx

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if INT8_KEY in read_metadata(fp32_path):
        raise CheckpointError(f'{fp32_path}: already int8; quantize the fp32 export')
    if method not in METHODS:
        raise ValueError(f'method {method!r}: use one of {", ".join(METHODS)}')
    pictures, unreadable = _read_calibration_images(calibration_dir, images, log)

    # the fp32 file through detect.py's detector: its detections, and the inputs it fed the network
    reference_detector = build_detector(fp32_path, None, 'cpu', conf_thres=CANDIDATES)
    recorder = _RecordingSession(reference_detector.model.session)
    reference_detector.model.session = recorder
    reference = detect_all(reference_detector, pictures)
    threshold = confident_threshold(reference, len(pictures))
    confident = sum(int((r['scores'] >= threshold).sum()) for r in reference)
    if tolerance is not None and not confident:
        raise QuantizationRefused(f'the fp32 model detects nothing on the {len(pictures)} calibration images of '
                                  f'{calibration_dir}, so the drift cannot be measured; calibrate on images with what '
                                  f'it detects; nothing written')
    sizes = sorted({tuple(feed[INPUT_NAME].shape[-2:]) for feed in recorder.inputs})

    model = onnx.load(str(fp32_path))
    conv_weights = {node.name: node.input[1] for node in model.graph.node if node.op_type == 'Conv'}
    if keep_fp32 == 'auto':
        candidates = {'none': [], 'stem': stem_nodes(model), 'stem+heads': stem_nodes(model) + head_nodes(model)}
    else:
        candidates = {keep_fp32: stem_nodes(model)} if keep_fp32 == 'stem' else {'given': list(keep_fp32)}
    report = {
        'weights': 'int8, symmetric, per output channel' + (', 7-bit (reduce_range)' if reduce_range else ''),
        'activations': f'{activations}, per tensor', 'format': quant_format,
        'calibration': {'folder': str(calibration_dir), 'images': len(pictures), 'unreadable': unreadable,
                        'method': method, 'input_sizes': len(sizes), 'largest': list(max(sizes, key=np.prod))},
        'drift_measure': f'1 - AP of the int8 detections (score > {CANDIDATES}) against the fp32 detections scoring '
                         f'>= {threshold:.3g} ({confident} on the calibration images)',
        'tolerance': tolerance, 'tried': [],
    }

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f'.{out_path.name}.', dir=out_path.parent) as work:
        cache = Path(work) / 'ranges.json'  # the activation ranges, calibrated once for every candidate
        for rule, excluded in candidates.items():
            tmp = Path(work) / f'{rule}.onnx'
            _quantize(fp32_path, tmp, recorder.inputs, excluded, cache, method=method, quant_format=quant_format,
                      activations=activations, reduce_range=reduce_range)
            quantized = onnx.load(str(tmp))
            del quantized.metadata_props[:]
            for entry in model.metadata_props:  # the fp32 file's, as written: arch, pixels, outputs, decoding
                quantized.metadata_props.add(key=entry.key, value=entry.value)
            onnx.save(quantized, str(tmp))
            # the drift: the int8 file's detections on the same images against the fp32 file's
            candidate = detect_all(build_detector(tmp, None, 'cpu', conf_thres=CANDIDATES), pictures)
            ap, _ = agreement(reference, candidate, threshold)
            fp32_convs = [conv_weights[n].removesuffix('.weight') for n in excluded if n in conv_weights]
            report['tried'].append({'fp32': rule, 'fp32_convs': len(fp32_convs), 'drift': round(1.0 - ap, 5)})
            if tolerance is None or 1.0 - ap <= tolerance:
                break
        else:
            drifts = ' and '.join(f'{t["drift"]:.4f} with {t["fp32_convs"]} convs fp32' for t in report['tried'])
            raise QuantizationRefused(f'int8 detections drift {drifts} from the fp32 model\'s on the {len(pictures)} '
                                      f'calibration images (tolerance {tolerance:g}; 1 - AP against its {confident} '
                                      f'confident detections); nothing written')
        report.update(fp32=rule, fp32_convs=fp32_convs, fp32_nodes=excluded, drift=report['tried'][-1]['drift'])
        quantized.metadata_props.add(key=INT8_KEY, value=json.dumps(report))
        onnx.save(quantized, str(tmp))
        os.replace(tmp, out_path)
    return report


def _read_calibration_images(folder, limit, log) -> tuple[list, int]:
    pictures = [(path, read_image(path)) for path in calibration_paths(folder, limit)]
    unreadable = [path.name for path, image in pictures if image is None]
    pictures = [image for _, image in pictures if image is not None]
    if not pictures:
        raise FileNotFoundError(f'{folder}: no readable images' + (f' ({len(unreadable)} could not be decoded)'
                                                                   if unreadable else ''))
    if unreadable:
        log(f'calibration: skipping {len(unreadable)} unreadable images ({", ".join(unreadable[:5])}'
            f'{" ..." if len(unreadable) > 5 else ""})')
    return pictures, len(unreadable)


def _quantize(fp32_path, out_path, inputs, excluded, cache, *, method, quant_format, activations, reduce_range):
    """onnxruntime's static quantization of `fp32_path` into `out_path`, calibrated on the recorded `inputs` (the
    ranges kept in `cache` for the next call), `excluded` nodes left in fp32."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    # Entropy and Percentile keep every activation of the inputs they are given in memory: chunks of <= 8 inputs
    chunk = max(d for d in range(1, 9) if len(inputs) % d == 0)
    with _quiet_quantizer():
        quantize_static(
            str(fp32_path), str(out_path), _Inputs(inputs), calibration_cache_path=str(cache),
            quant_format=QuantFormat.QOperator if quant_format == 'qoperator' else QuantFormat.QDQ,
            per_channel=True, reduce_range=reduce_range,
            activation_type=QuantType.QUInt8 if activations == 'uint8' else QuantType.QInt8,
            weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
            calibrate_method={'minmax': CalibrationMethod.MinMax, 'entropy': CalibrationMethod.Entropy,
                              'percentile': CalibrationMethod.Percentile}[method],
            extra_options={} if method == 'minmax' else {'CalibStridedMinMax': chunk})
