"""int8 detectors: common/inference/quantize.py on a tiny, freshly initialised network of each family we export
(RetinaFace, our CenterFace, the released CenterFace's layers, RetinaNet) writes a file that says it is int8 and on
what it was calibrated, runs through detect.py like the fp32 file, and is refused when its detections drift past the
tolerance. The networks' score biases are set so that a fresh network scores about 0.5 or more everywhere and has
confident detections to compare."""
import json

import cv2
import numpy as np
import onnx
import pytest
import torch

from common.anchors import RETINANET_RATIOS, RETINANET_SCALES, retinanet_anchor_sizes
from common.inference.quantize import INT8_KEY, QuantizationRefused, calibration_paths, quantize_detector, stem_nodes
from common.models import build_model
from common.models.centerface import RELEASED_ARCH

FAMILIES = {  # arch, the score head's bias (softmax for RetinaFace: any one value is an even split), its value
    'retinaface': ({'name': 'retinaface', 'network': 'mobile0.25'}, 'ClassHead', 0.0),
    'centerface': ({'name': 'centerface', 'width_mult': 0.35, 'neck_channels': 16, 'head_conv': 16}, 'heads.hm', 1.0),
    'centerface released': (dict(RELEASED_ARCH), 'heads.hm', 1.0),
    'retinanet': ({'name': 'retinanet', 'arch': 'resnet18', 'num_classes': 2, 'classes': ['cat', 'dog'],
                   'fpn_channels': 32, 'group_norm': True, 'anchor_sizes': list(retinanet_anchor_sizes(64)),
                   'anchor_scales': list(RETINANET_SCALES), 'anchor_ratios': list(RETINANET_RATIOS), 'size': 64},
                  'classifier.output', 1.0),
}
_EXPORTED = {}


def exported(family, tmp_path_factory):
    """The fp32 .onnx of a fresh network of `family` (score biases 0), traced once per test session."""
    if family not in _EXPORTED:
        import export
        arch, score_head, bias = FAMILIES[family]
        torch.manual_seed(0)
        model = build_model(arch).eval()
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.startswith(score_head) and name.endswith('bias'):
                    parameter.fill_(bias)
        out = tmp_path_factory.mktemp('fp32') / f'{family.replace(" ", "_")}.onnx'
        export.write_checked(export.trace(model, arch, 18, (64, 96)), model, arch, out, (96, 64), 1e-4)
        _EXPORTED[family] = out
    return _EXPORTED[family]


@pytest.fixture
def calibration(tmp_path):
    """Five small images in two folders, and one file that is not an image."""
    rng = np.random.default_rng(0)
    folder = tmp_path / 'calibration'
    for i, (h, w) in enumerate([(64, 96), (80, 80), (48, 112), (96, 64), (72, 72)]):
        path = folder / ('a' if i % 2 else 'b') / f'{i}.jpg'
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (5, 5), 2))
    (folder / 'a' / 'broken.jpg').write_bytes(b'not a jpeg')
    return folder


@pytest.mark.slow
@pytest.mark.parametrize('family', list(FAMILIES))
def test_int8_file_records_its_calibration_runs_in_detect_and_is_refused_past_the_tolerance(
        family, calibration, tmp_path, tmp_path_factory):
    import detect
    fp32 = exported(family, tmp_path_factory)
    out = tmp_path / 'int8.onnx'
    with pytest.raises(QuantizationRefused, match='nothing written'):
        quantize_detector(fp32, out, calibration, tolerance=0.0, keep_fp32='stem', log=lambda *a: None)
    assert not out.exists() and not list(tmp_path.glob('.int8.onnx*'))  # no file, no leftovers

    report = quantize_detector(fp32, out, calibration, tolerance=1.0, log=lambda *a: None)
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    recorded = json.loads(meta[INT8_KEY])
    assert recorded == json.loads(json.dumps(report))
    assert recorded['calibration']['folder'] == str(calibration) and recorded['calibration']['images'] == 5
    assert recorded['calibration']['unreadable'] == 1 and recorded['calibration']['method'] == 'minmax'
    assert 0 < recorded['drift'] <= 1.0 and recorded['tolerance'] == 1.0
    assert recorded['fp32'] == 'none' and recorded['fp32_convs'] == []  # 'auto' tries everything int8 first
    fp32_meta = {p.key: p.value for p in onnx.load(str(fp32)).metadata_props}
    assert {k: meta[k] for k in fp32_meta} == fp32_meta  # arch, pixels, outputs, decoding: as the fp32 file's
    assert any(n.op_type == 'QLinearConv' for n in model.graph.node)

    found = detect.main(detect.parse_args(['--weights', str(out), '--source', str(calibration / 'a'), '--device',
                                           'cpu', '--out', str(tmp_path / 'detect'), '--save-txt', '--no-save']))
    assert found['images'] == 2 and found['skipped'] == ['broken.jpg']
    assert len(list((tmp_path / 'detect').glob('*.txt'))) == 2


def test_stem_is_the_chain_before_the_first_branch():
    """A conv -> relu -> conv -> relu chain, then a tensor two convs read: the stem is the four nodes before it;
    a pooling after the last conv's activation stays out of it."""
    from onnx import TensorProto, helper
    nodes = [helper.make_node('Conv', ['x', 'w'], ['a'], name='c1'), helper.make_node('Relu', ['a'], ['b'], name='r1'),
             helper.make_node('Conv', ['b', 'w'], ['c'], name='c2'), helper.make_node('Relu', ['c'], ['d'], name='r2'),
             helper.make_node('MaxPool', ['d'], ['e'], name='pool', kernel_shape=[2, 2]),
             helper.make_node('Shape', ['e'], ['s'], name='shape'),
             helper.make_node('Conv', ['e', 'w'], ['f'], name='left'),
             helper.make_node('Conv', ['e', 'w'], ['g'], name='right')]
    graph = helper.make_graph(nodes, 'g', [helper.make_tensor_value_info('x', TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ('f', 'g', 's')])
    assert stem_nodes(helper.make_model(graph)) == ['c1', 'r1', 'c2', 'r2']


def test_calibration_images_spread_over_the_folders(tmp_path):
    for event in range(4):
        for i in range(5):
            path = tmp_path / f'{event}--event' / f'{i}.jpg'
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b'')
    (tmp_path / 'notes.txt').write_text('not an image')
    picked = calibration_paths(tmp_path, 4)
    assert [p.parent.name for p in picked] == ['0--event', '1--event', '2--event', '3--event']
    assert len(calibration_paths(tmp_path)) == 20
