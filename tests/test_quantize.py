"""int8 detectors: `export.py --int8` on a tiny, freshly initialised network of each family we export (RetinaFace
from its checkpoint, the released CenterFace's layers and RetinaNet from their fp32 .onnx) writes a file that says it
is int8 and on what it was calibrated, runs through detect.py and the training scripts' --evaluate like the fp32
file, and is refused when its detections drift past the tolerance; bad flags get one line. The networks' score
biases are set so that a fresh network scores about 0.5 or more everywhere and has confident detections to compare.
Tracing takes most of the time (about 20 s a network), so each fp32 file is traced once a session, for both xdist
workers."""
import fcntl
import json
import os

import cv2
import numpy as np
import onnx
import pytest
import torch

from common.anchors import RETINANET_RATIOS, RETINANET_SCALES, retinanet_anchor_sizes
from common.inference.onnx_model import INT8_KEY
from common.models import build_model
from common.models.centerface import RELEASED_ARCH
from common.quantize import (CONFIDENT, QuantizationRefused, agreement, calibration_paths, confident_threshold,
                             head_nodes, quantize_detector, stem_nodes)
from common.synthetic import make_voc, make_widerface
from common.synthetic.objects import CLASSES as VOC_SYNTHETIC_CLASSES

FAMILIES = {  # arch, the score head's bias (softmax for RetinaFace: any one value is an even split), its value
    'retinaface': ({'name': 'retinaface', 'network': 'mobile0.25'}, 'ClassHead', 0.0),
    'centerface': ({'name': 'centerface', 'width_mult': 0.35, 'neck_channels': 16, 'head_conv': 16}, 'heads.hm', 1.0),
    'centerface released': (dict(RELEASED_ARCH), 'heads.hm', 1.0),
    'retinanet': ({'name': 'retinanet', 'arch': 'resnet18', 'num_classes': len(VOC_SYNTHETIC_CLASSES),
                   'classes': list(VOC_SYNTHETIC_CLASSES), 'fpn_channels': 32, 'group_norm': True,
                   'anchor_sizes': list(retinanet_anchor_sizes(64)), 'anchor_scales': list(RETINANET_SCALES),
                   'anchor_ratios': list(RETINANET_RATIOS), 'size': 64}, 'classifier.output', 1.0),
}


def checkpoint(family, folder):
    """Our checkpoint of a fresh network of `family`, its score biases set."""
    arch, score_head, bias = FAMILIES[family]
    torch.manual_seed(0)
    model = build_model(arch).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith(score_head) and name.endswith('bias'):
                parameter.fill_(bias)
    path = folder / f'{family.replace(" ", "_")}.pt'
    torch.save({'model': model.state_dict(), 'arch': arch}, path)
    return path, model, arch


def exported(family, tmp_path_factory):
    """The fp32 .onnx of `family`, traced by export.py's own steps in-process, once a session: in the folder the
    xdist workers' temporary folders share, under a lock, so the worker that comes second reads the first's file."""
    import export
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base) / 'int8-fp32'
    shared.mkdir(exist_ok=True)
    out = shared / f'{family.replace(" ", "_")}.onnx'
    with open(shared / '.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.exists():
            _, model, arch = checkpoint(family, shared)
            export.write_checked(export.trace(model, arch, 18, (64, 96)), model, arch, out, (96, 64), 1e-4)
    return out


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


def export_int8(weights, out, calibration, *flags):
    import export
    export.main(export.parse_args(['--weights', str(weights), '--out', str(out), '--int8', '--calibration',
                                   str(calibration), *map(str, flags)]))


def evaluate_with_the_training_script(family, weights, tmp_path) -> dict:
    """train_centernet.py / train_retinanet.py --evaluate on a tiny synthetic set: the results they write."""
    if family == 'retinanet':
        import train_retinanet as script
        root = make_voc(tmp_path / 'voc', num_images=6, seed=0)
        argv = ['--data-root', str(root)]
    else:
        import train_centernet as script
        argv = ['--data-root', str(make_widerface(tmp_path / 'faces', num_images=4, seed=0))]
    script.main(script.parse_args(argv + ['--evaluate', '--weights', str(weights), '--device', 'cpu', '--workers',
                                          '0', '--out', str(tmp_path / 'evaluate')]))
    return json.loads((tmp_path / 'evaluate' / 'results.json').read_text())


@pytest.mark.slow
@pytest.mark.parametrize('family', ['retinaface', 'centerface released', 'retinanet'])
def test_int8_export_records_its_calibration_runs_like_fp32_and_is_refused_past_the_tolerance(
        family, calibration, tmp_path, tmp_path_factory, capsys):
    """RetinaFace goes from its checkpoint (export.py traces, checks, then quantizes, and keeps no fp32 file); the
    other two from their fp32 .onnx, RetinaNet (weights shared across levels) first refused at tolerance 0."""
    import detect
    from common.inference.onnx_model import metadata_for
    out = tmp_path / 'out' / 'int8.onnx'
    if family == 'retinaface':
        weights, _, arch = checkpoint(family, tmp_path)
    else:
        weights, arch = exported(family, tmp_path_factory), FAMILIES[family][0]
    if family == 'retinanet':
        with pytest.raises(SystemExit) as stop:
            export_int8(weights, out, calibration, '--calibration-images', 5, '--int8-tolerance', 0)
        err = capsys.readouterr().err
        assert stop.value.code == 1 and err.count('\n') == 1 and 'drift' in err and 'nothing written' in err, err
        assert not out.parent.exists() or not any(out.parent.iterdir())

    export_int8(weights, out, calibration, '--calibration-images', 5, '--int8-tolerance', 1)
    printed = capsys.readouterr().out
    assert 'calibrated on 4 images' in printed and 'int8)' in printed, printed
    assert ('self-check on' in printed) == (family == 'retinaface'), printed  # traced and checked first
    assert sorted(p.name for p in out.parent.iterdir()) == ['int8.onnx']  # no fp32 file, no leftovers
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    recorded = json.loads(meta[INT8_KEY])
    assert recorded['calibration']['folder'] == str(calibration) and recorded['calibration']['images'] == 4
    assert recorded['calibration']['unreadable'] == 1 and recorded['calibration']['method'] == 'minmax'
    assert 0 < recorded['drift'] <= 1 and recorded['tolerance'] == 1
    assert recorded['fp32'] == 'none' and recorded['fp32_convs'] == []  # everything int8 is tried first
    assert {k: meta[k] for k in metadata_for(arch)} == metadata_for(arch)  # arch, pixels, outputs: as fp32's
    assert any(n.op_type == 'QLinearConv' for n in model.graph.node)

    found = detect.main(detect.parse_args(['--weights', str(out), '--source', str(calibration / 'a'), '--device',
                                           'cpu', '--out', str(tmp_path / 'detect'), '--save-txt', '--no-save']))
    assert found['images'] == 2 and found['skipped'] == ['broken.jpg']
    assert len(list((tmp_path / 'detect').glob('*.txt'))) == 2
    if family != 'retinaface':
        results = evaluate_with_the_training_script(family, out, tmp_path)
        assert set(results) >= ({'mAP'} if family == 'retinanet' else {'easy', 'medium', 'hard'})


def fake_export(path, int8: bool):
    """An .onnx file with our metadata and no graph: enough for the checks that come before the network runs."""
    model = onnx.helper.make_model(onnx.helper.make_graph([], 'g', [], []))
    model.metadata_props.add(key='facekit_arch', value=json.dumps(FAMILIES['centerface'][0]))
    if int8:
        model.metadata_props.add(key=INT8_KEY, value='{}')
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize('case', ['no calibration', 'calibration alone', 'missing folder', 'no images', 'undecodable',
                                  'onnx alone', 'already int8', 'recognition'])
def test_bad_int8_input_is_one_line_exit_2(case, tmp_path, capsys):
    import export
    weights, _, _ = checkpoint('centerface', tmp_path)
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'notes.txt').write_text('no images here')
    broken = tmp_path / 'broken'
    broken.mkdir()
    (broken / 'a.jpg').write_bytes(b'not a jpeg')
    fp32, int8 = fake_export(tmp_path / 'fp32.onnx', False), fake_export(tmp_path / 'int8.onnx', True)
    recognition = tmp_path / 'recognition.pt'
    torch.save({'model': {}, 'arch': {'name': 'recognition', 'backbone': 'fmobile', 'input': 'gray128'}}, recognition)
    argv, says = {
        'no calibration': (['--weights', weights, '--int8'], '--int8 needs --calibration'),
        'calibration alone': (['--weights', weights, '--calibration', empty], '--calibration'),
        'missing folder': (['--weights', weights, '--int8', '--calibration', tmp_path / 'nope'], 'not found'),
        'no images': (['--weights', fp32, '--int8', '--calibration', empty], '--calibration'),
        'undecodable': (['--weights', fp32, '--int8', '--calibration', broken], '1 could not be decoded'),
        'onnx alone': (['--weights', fp32], 'quantizes an fp32 export with --int8'),
        'already int8': (['--weights', int8, '--int8', '--calibration', empty], 'already int8'),
        'recognition': (['--weights', recognition, '--int8', '--calibration', empty], 'detectors only'),
    }[case]
    with pytest.raises(SystemExit) as stop:
        export.main(export.parse_args([str(a) for a in argv] + ['--out', str(tmp_path / 'm.onnx')]))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count('\n') == 1 and says in err, err
    assert not (tmp_path / 'm.onnx').exists()


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


def test_heads_are_the_convs_the_outputs_are_read_from():
    """Two levels' output convs, reshaped, transposed and concatenated into one output, and a conv before them that
    feeds both: the heads are the two output convs, not the shared one."""
    from onnx import TensorProto, helper
    nodes = [helper.make_node('Conv', ['x', 'w'], ['t'], name='tower'),
             helper.make_node('Conv', ['t', 'w'], ['a'], name='out1'),
             helper.make_node('Conv', ['t', 'w'], ['b'], name='out2'),
             helper.make_node('Transpose', ['a'], ['a1'], name='ta', perm=[0, 2, 3, 1]),
             helper.make_node('Reshape', ['a1', 'shape'], ['a2'], name='ra'),
             helper.make_node('Reshape', ['b', 'shape'], ['b2'], name='rb'),
             helper.make_node('Concat', ['a2', 'b2'], ['y'], name='cat', axis=1)]
    graph = helper.make_graph(nodes, 'g', [helper.make_tensor_value_info('x', TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info('y', TensorProto.FLOAT, None)])
    assert sorted(head_nodes(helper.make_model(graph))) == ['out1', 'out2']


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


def test_confident_threshold_is_lowered_only_for_a_model_with_fewer_confident_detections_than_images():
    def results(*scores):
        return [{'scores': np.array(s, np.float32)} for s in scores]
    assert confident_threshold(results([0.9, 0.6], [0.7, 0.1]), 3) == CONFIDENT   # 3 >= 0.5 for 3 images
    assert confident_threshold(results([0.3, 0.2], [0.4, 0.05], []), 3) == pytest.approx(0.2)  # the 3rd best
    assert confident_threshold(results([0.3], [], []), 3) == pytest.approx(0.3)   # fewer detections than images
    assert confident_threshold(results([], [], []), 3) == CONFIDENT               # nothing: refused by the caller


def test_agreement_is_the_ap_of_the_candidate_against_the_confident_reference():
    """Two confident fp32 boxes (and one below 0.5, not counted as truth): the same boxes give AP 1; one of them
    missed gives 0.5; a false box ranked above both gives 2/3 (VOC all-point AP: precision 1/2 then 2/3, the envelope
    2/3 at both recalls);
    RetinaNet's labels are scored per class and averaged."""
    def found(boxes, scores, labels=None):
        result = {'boxes': np.array(boxes, np.float32).reshape(-1, 4), 'scores': np.array(scores, np.float32)}
        if labels is not None:
            result['labels'] = np.array(labels)
        return result
    a, b, far = [0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]
    reference = [found([a, b, far], [0.9, 0.8, 0.3])]
    assert agreement(reference, [found([a, b], [0.9, 0.8])]) == (pytest.approx(1.0), 2)
    assert agreement(reference, [found([a], [0.9])])[0] == pytest.approx(0.5)
    assert agreement(reference, [found([far, a, b], [0.95, 0.9, 0.8])])[0] == pytest.approx(2 / 3)
    labelled = [found([a, b], [0.9, 0.8], [0, 1])]
    assert agreement(labelled, [found([a, b], [0.9, 0.8], [0, 0])])[0] == pytest.approx(0.5)  # class 1 missed


@pytest.mark.slow
def test_an_undertrained_network_scoring_below_the_threshold_still_gets_a_drift_and_a_refusal(
        calibration, tmp_path, tmp_path_factory):
    """The fresh released-layout CenterFace with its heatmap bias at -3 (scores about 0.05 everywhere, nothing near
    detect.py's 0.5): its best detections stand in as the truth, so the drift is a number and tolerance 0 refuses
    with it."""
    from onnx import numpy_helper
    model = onnx.load(str(exported('centerface released', tmp_path_factory)))
    bias = next(t for t in model.graph.initializer if t.name == 'heads.hm.bias')
    bias.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(bias), -3.0), bias.name))
    fp32 = tmp_path / 'undertrained.onnx'
    onnx.save(model, str(fp32))
    out = tmp_path / 'int8.onnx'
    with pytest.raises(QuantizationRefused, match=r'drift \d\.\d+ with 0 convs fp32 .* against its 4 confident'):
        quantize_detector(fp32, out, calibration, images=5, tolerance=0, keep_fp32=[], log=lambda *_: None)
    assert not out.exists()
    report = quantize_detector(fp32, out, calibration, images=5, tolerance=None, keep_fp32=[], log=lambda *_: None)
    assert 0 < report['drift'] <= 1 and '(4 on the calibration images)' in report['drift_measure']
    threshold = float(report['drift_measure'].split('>= ')[1].split(' ')[0])
    assert 0.02 < threshold < CONFIDENT, report['drift_measure']
