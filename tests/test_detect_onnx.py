"""detect.py with released and exported models, against references on the real photos and WIDER val samples:

- the converted released CenterFace gives the faces that onnxruntime running the authors' file with their pipeline
  gives (the pipeline written here from its documented steps: RGB 0..255 resized to sides that are multiples of 32,
  every heatmap cell above the threshold, centres (cell + offset + 0.5) * 4, sizes exp(s) * 4 in (h, w) order,
  landmarks in (y, x) order from the box's top-left corner in box units, boxes starting inside the image, NMS 0.3
  with +1 pixel areas, scaled back to the image), and those documented facts hold on real faces;
- an .onnx file from export.py gives the detections of the .pth it came from.
Agreement means: every face scoring >= 0.5 on one side has one on the other with corners within 1.5 px, score within
2e-3 and landmarks within 2 px (so neither side finds faces the other misses). Skipped without ../shared/data or the
released file."""
import importlib.util
import json
import math

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest

from common.models.convert import with_free_input_shape
from test_convert_centerface import converted_checkpoint, released_onnx  # noqa: F401  (a fixture)
from test_export import REPO, exported_mnet

CORNER_PX, SCORE, LANDMARK_PX, STRONG = 1.5, 2e-3, 2.0, 0.5


# ------------------------------------------------------------------------------ the authors' pipeline, written here

def authors_session(path):
    model = with_free_input_shape(onnx.load(str(path)))  # the file declares a fixed 10 x 3 x 32 x 32 input
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])


def authors_forward(session, image, rgb=True):
    """The released network on one BGR image resized to sides rounded up to multiples of 32 -> (heatmap, scale,
    offset, landmarks) for that one image, and the (x, y) resize factors."""
    height, width = image.shape[:2]
    new_h, new_w = math.ceil(height / 32) * 32, math.ceil(width / 32) * 32
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    blob = (resized[..., ::-1] if rgb else resized).transpose(2, 0, 1)[None].astype(np.float32)
    outputs = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(blob)})
    return [o[0] for o in outputs], (new_w / width, new_h / height)


def greedy_nms(boxes, scores, threshold):
    """Best first; a box overlapping a kept one by IoU >= threshold (+1 pixel areas) goes."""
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    order, keep = np.argsort(-scores, kind='stable'), []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        overlap = (np.minimum(boxes[best, 2:], boxes[rest, 2:]) - np.maximum(boxes[best, :2], boxes[rest, :2]) + 1)
        inter = overlap.clip(min=0).prod(axis=1)
        order = rest[inter / (areas[best] + areas[rest] - inter) < threshold]
    return np.array(keep, dtype=int)


def authors_decode(outputs, factors, threshold=0.3, nms=0.3, size_hw=(0, 1), offset_yx=(0, 1), landmark_yx=(0, 1),
                   half_cell=0.5):
    """Detections (boxes x1y1x2y2, scores, landmarks (N,5,2)) in image pixels. The keyword arguments are the
    documented facts, so a test can swap one."""
    heatmap, scale, offset, landmarks = outputs
    rows, cols = np.nonzero(heatmap[0] > threshold)
    scores = heatmap[0, rows, cols]
    height, width = np.exp(scale[size_hw[0], rows, cols]) * 4, np.exp(scale[size_hw[1], rows, cols]) * 4
    cy = (rows + offset[offset_yx[0], rows, cols] + half_cell) * 4
    cx = (cols + offset[offset_yx[1], rows, cols] + half_cell) * 4
    input_h, input_w = heatmap.shape[1] * 4, heatmap.shape[2] * 4
    x1, y1 = np.clip(cx - width / 2, 0, input_w), np.clip(cy - height / 2, 0, input_h)
    boxes = np.stack([x1, y1, np.minimum(x1 + width, input_w), np.minimum(y1 + height, input_h)], axis=1)
    ys, xs = landmarks[landmark_yx[0]::2, rows, cols].T, landmarks[landmark_yx[1]::2, rows, cols].T
    points = np.stack([x1[:, None] + xs * width[:, None], y1[:, None] + ys * height[:, None]], axis=-1)
    keep = greedy_nms(boxes, scores, nms)
    fx, fy = factors
    return boxes[keep] / [fx, fy, fx, fy], scores[keep], points[keep] / [fx, fy]


# ------------------------------------------------------------------------------------------------------ helpers

def image_paths(shared_data):
    return [path for folder in sources(shared_data) for path in sorted(folder.glob('*.jpg'))]


_AUTHORS = {}


@pytest.fixture
def authors_outputs(shared_data, released_onnx):  # noqa: F811  (the imported fixture)
    """{image name: authors_forward(...)} for every image, computed once for the module's tests."""
    if not _AUTHORS:
        session = authors_session(released_onnx)
        _AUTHORS.update({p.name: authors_forward(session, cv2.imread(str(p))) for p in image_paths(shared_data)})
    return _AUTHORS


def run_detect(out, weights, folders, *flags, network=None):
    """detect.py's main() (in-process: the code the command line runs) on each folder with --save-txt ->
    {image name: (boxes, scores, points)}."""
    import detect
    found = {}
    for source in folders:
        folder = out / source.name
        argv = ['--weights', str(weights), '--source', str(source), '--out', str(folder), '--save-txt', '--no-save',
                '--device', 'cpu', *map(str, flags)] + (['--network', network] if network else [])
        detect.main(detect.parse_args(argv))
        for txt in folder.glob('*.txt'):
            lines = txt.read_text().splitlines()
            rows = np.array([[float(v) for v in line.split()] for line in lines[2:]]).reshape(-1, 15)
            boxes = np.concatenate([rows[:, :2], rows[:, :2] + rows[:, 2:4]], axis=1)
            found[lines[0]] = boxes, rows[:, 4], rows[:, 5:].reshape(-1, 5, 2)
    return found


def assert_same_faces(ours, theirs, where):
    """Every face >= STRONG of each side matched on the other within the tolerances."""
    for (a_boxes, a_scores, a_points), (b_boxes, b_scores, b_points), what in (
            (theirs, ours, 'not found'), (ours, theirs, 'extra')):
        strong = a_scores >= STRONG
        if not strong.any():
            continue
        assert len(b_boxes), f'{where}: {strong.sum()} faces {what}'
        corner = np.abs(a_boxes[strong, None] - b_boxes[None]).max(axis=-1)
        match = corner.argmin(axis=1)
        rows = np.arange(len(match))
        assert (corner[rows, match] <= CORNER_PX).all(), \
            f'{where}: faces {what}: {a_boxes[strong][corner[rows, match] > CORNER_PX].round(1).tolist()}'
        assert np.abs(a_scores[strong] - b_scores[match]).max() <= SCORE, where
        assert np.abs(a_points[strong] - b_points[match]).max() <= LANDMARK_PX, where


def sources(shared_data):
    return shared_data / 'photos', shared_data / 'widerface' / 'val_samples' / 'images'


# ------------------------------------------------------------------------------------------------------ tests

def test_converted_released_centerface_gives_the_authors_faces(shared_data, released_onnx,  # noqa: F811
                                                               authors_outputs, tmp_path, tmp_path_factory):
    weights = converted_checkpoint(released_onnx, tmp_path_factory)
    ours = run_detect(tmp_path, weights, sources(shared_data), '--conf-thres', 0.3, '--nms-thres', 0.3)
    assert set(ours) == set(authors_outputs)
    strong = 0
    for name, (outputs, factors) in authors_outputs.items():
        theirs = authors_decode(outputs, factors)
        assert_same_faces(ours[name], theirs, name)
        strong += int((theirs[1] >= STRONG).sum())
    assert strong > 300  # the crowds: hundreds of faces compared


def test_the_documented_decoding_holds_on_real_faces(shared_data, released_onnx, authors_outputs):  # noqa: F811
    """On the ten val samples with their ground truth, the documented orders fit the faces better than any swap:
    boxes overlap the true faces more than with (w, h) sizes, (x, y) offsets or no half-cell shift; landmarks in
    (y, x) order put the eyes above the mouth; RGB input finds more faces than BGR."""
    samples = shared_data / 'widerface' / 'val_samples'
    truth = json.loads((samples / 'gt.json').read_text())
    session = authors_session(released_onnx)
    variants = {'documented': {}, 'sizes (w, h)': {'size_hw': (1, 0)}, 'offsets (x, y)': {'offset_yx': (1, 0)},
                'no half cell': {'half_cell': 0.0}, 'landmarks (x, y)': {'landmark_yx': (1, 0)}}
    overlap = {name: [] for name in variants}
    eyes_above_mouth = {name: [] for name in variants}
    faces = {'rgb': 0, 'bgr': 0}
    for name, entry in truth.items():
        gt = np.array(entry['boxes_xywh'], np.float64).reshape(-1, 4)
        gt[:, 2:] += gt[:, :2]
        outputs, factors = authors_outputs[f'{name}.jpg']
        for variant, facts in variants.items():
            boxes, scores, points = authors_decode(outputs, factors, **facts)
            boxes, points = boxes[scores >= STRONG], points[scores >= STRONG]
            inter = (np.minimum(boxes[:, None, 2:], gt[None, :, 2:]) -
                     np.maximum(boxes[:, None, :2], gt[None, :, :2])).clip(min=0).prod(-1)
            union = (boxes[:, 2:] - boxes[:, :2]).prod(-1)[:, None] + (gt[:, 2:] - gt[:, :2]).prod(-1)[None] - inter
            overlap[variant] += list((inter / union).max(axis=1))
            eyes_above_mouth[variant] += list(points[:, :2, 1].max(axis=1) < points[:, 3:, 1].min(axis=1))
        faces['rgb'] += int((authors_decode(outputs, factors)[1] >= STRONG).sum())
        bgr = authors_forward(session, cv2.imread(str(samples / 'images' / f'{name}.jpg')), rgb=False)
        faces['bgr'] += int((authors_decode(*bgr)[1] >= STRONG).sum())
    mean_iou = {k: float(np.mean(v)) for k, v in overlap.items()}
    for variant in ('sizes (w, h)', 'offsets (x, y)', 'no half cell'):
        assert mean_iou['documented'] > mean_iou[variant] + 0.02, mean_iou  # measured 0.78 vs 0.61, 0.74, 0.70
    assert np.mean(eyes_above_mouth['documented']) > 0.95 > 0.05 > np.mean(eyes_above_mouth['landmarks (x, y)'])
    assert faces['rgb'] > 1.3 * faces['bgr'], faces  # measured 357 vs 213


@pytest.mark.slow
def test_exported_retinaface_gives_the_detections_of_its_pth(shared_data, tmp_path, tmp_path_factory):
    onnx_path, _ = exported_mnet(shared_data, tmp_path_factory)
    weights = shared_data / 'weights' / 'retinaface_mobilenet0.25_Final.pth'
    settings = ('--conf-thres', 0.02, '--nms-thres', 0.4)
    in_torch = run_detect(tmp_path / 'pth', weights, sources(shared_data), *settings, network='mobile0.25')
    in_onnxruntime = run_detect(tmp_path / 'onnx', onnx_path, sources(shared_data), *settings)
    assert set(in_torch) == set(in_onnxruntime) and len(in_torch) == len(image_paths(shared_data))
    for name in in_torch:
        assert_same_faces(in_onnxruntime[name], in_torch[name], name)
    assert sum(len(found[1]) for found in in_torch.values()) > 500


@pytest.mark.slow
def test_bench_times_the_onnx_file_beside_its_pytorch_weights(shared_data, tmp_path, tmp_path_factory, capsys):
    onnx_path, _ = exported_mnet(shared_data, tmp_path_factory)
    source = tmp_path / 'photos'
    source.mkdir()
    cv2.imwrite(str(source / 'group.jpg'), cv2.resize(cv2.imread(str(shared_data / 'photos' / 'group_1.jpg')),
                                                      (360, 240)))
    spec = importlib.util.spec_from_file_location('detect_speed', REPO / 'bench' / 'detect_speed.py')
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(bench.parse_args(['--weights', str(onnx_path), '--pytorch-weights',
                                 str(shared_data / 'weights' / 'retinaface_mobilenet0.25_Final.pth'), '--network',
                                 'mobile0.25', '--source', str(source), '--repeats', '1']))
    printed = capsys.readouterr().out
    assert 'ours (onnxruntime retinaface mobile0.25)' in printed and 'pytorch (retinaface mobile0.25)' in printed
    assert 'agreement: max count difference 0, unmatched 0' in printed, printed
    for line in ('speedup: ', 'speedup_over_pytorch: '):
        assert f'\n{line}' in printed, printed
    assert printed.rstrip().splitlines()[-1].startswith('median_ms_per_image: ')


def test_onnx_file_without_our_metadata_is_one_line_exit_2(released_onnx, tmp_path, capsys):  # noqa: F811
    import detect
    with pytest.raises(SystemExit) as stop:
        detect.main(detect.parse_args(['--weights', str(released_onnx), '--source', str(tmp_path), '--device', 'cpu',
                                       '--out', str(tmp_path / 'out')]))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count('\n') == 1 and 'python -m common.models.convert' in err, err
