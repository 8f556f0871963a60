"""export.py as a user runs it: the shared Pytorch_Retinaface checkpoint to ONNX with dynamic batch, height and
width, its metadata, the self-check that refuses a file which disagrees with PyTorch, and bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from common.anchors import RETINAFACE_MIN_SIZES, RETINAFACE_STEPS, VARIANCES
from common.inference.load import load_detector_model
from common.models import build_model

REPO = Path(__file__).resolve().parents[1]
MNET = {'name': 'retinaface', 'network': 'mobile0.25'}
_EXPORTED = {}


def exported_mnet(shared_data, tmp_path_factory):
    """(path, completed process) of export.py on the shared RetinaFace MobileNet0.25, run once per test session
    (the trace takes most of the time)."""
    if 'result' not in _EXPORTED:
        out = tmp_path_factory.mktemp('export') / 'mnet.onnx'
        proc = subprocess.run([sys.executable, 'export.py', '--weights',
                               str(shared_data / 'weights' / 'retinaface_mobilenet0.25_Final.pth'),
                               '--network', 'mobile0.25', '--out', str(out)],
                              cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        _EXPORTED['result'] = out, proc
    return _EXPORTED['result']


@pytest.fixture
def mnet_model(shared_data):
    model, _ = load_detector_model(shared_data / 'weights' / 'retinaface_mobilenet0.25_Final.pth', 'mobile0.25')
    return model


def test_export_has_dynamic_shapes_and_records_what_detect_needs(shared_data, tmp_path_factory, mnet_model):
    path, proc = exported_mnet(shared_data, tmp_path_factory)
    assert 'self-check on (3, 3, 352, 288)' in proc.stdout, proc.stdout  # another batch and size than traced
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    (images,) = session.get_inputs()
    assert images.name == 'images' and images.type == 'tensor(float)'
    batch, channels, height, width = images.shape
    assert channels == 3 and all(isinstance(d, str) for d in (batch, height, width))  # named: dynamic
    assert [o.name for o in session.get_outputs()] == ['loc', 'conf', 'landmarks']
    for shape in ((1, 3, 20, 20), (2, 3, 123, 457)):  # tiny, odd, batched: none of them traced
        pixels = torch.rand(*shape, generator=torch.Generator().manual_seed(2)) * 255
        with torch.no_grad():
            expected = mnet_model(pixels)
        for got, want in zip(session.run(None, {'images': pixels.numpy()}), expected):
            assert got.shape == tuple(want.shape) and np.abs(got - want.numpy()).max() < 1e-4

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert json.loads(meta['facekit_arch']) == MNET
    pixels = json.loads(meta['facekit_pixels'])
    assert pixels['channels'] == 'BGR' and pixels['range'] == [0, 255] and '104, 117, 123' in pixels['in_graph']
    priors = json.loads(meta['facekit_decoding'])['priors']
    assert priors['min_sizes'] == [list(s) for s in RETINAFACE_MIN_SIZES] and priors['steps'] == list(RETINAFACE_STEPS)
    assert priors['variances'] == list(VARIANCES)
    assert json.loads(meta['facekit_outputs']) == {'names': ['loc', 'conf', 'landmarks'], 'dict': False}


def test_self_check_refuses_a_file_that_disagrees(shared_data, tmp_path_factory, tmp_path):
    """write_checked is export.py's last step: the traced file against another network must fail, and leave
    nothing behind; against the network it was traced from it is written."""
    import export
    path, _ = exported_mnet(shared_data, tmp_path_factory)
    proto = onnx.load(str(path))
    torch.manual_seed(0)
    untrained = build_model(MNET).eval()
    out = tmp_path / 'out.onnx'
    with pytest.raises(export.SelfCheckFailed, match='nothing written'):
        export.write_checked(proto, untrained, MNET, out, (64, 96), 1e-4)
    assert os.listdir(tmp_path) == []
    model, _ = load_detector_model(shared_data / 'weights' / 'retinaface_mobilenet0.25_Final.pth', 'mobile0.25')
    report = export.write_checked(proto, model, MNET, out, (64, 96), 1e-4)
    assert out.is_file() and max(report['differences'].values()) < 1e-4 and report['check_shape'] == (3, 3, 64, 96)


@pytest.mark.parametrize('case', ['missing', 'not onnx suffix', 'onnx given', 'no arch'])
def test_bad_input_is_one_line_exit_2(case, tmp_path, capsys):
    import export
    weights = tmp_path / 'model.pt'
    torch.save({'model': {}, 'arch': MNET}, weights)
    bare = tmp_path / 'bare.pth'
    torch.save({'conv.weight': torch.zeros(1)}, bare)
    onnx_file = tmp_path / 'model.onnx'
    onnx_file.write_bytes(b'\x08\x07')
    argv, says = {
        'missing': (['--weights', str(tmp_path / 'nope.pt'), '--out', str(tmp_path / 'm.onnx')], 'not found'),
        'not onnx suffix': (['--weights', str(weights), '--out', str(tmp_path / 'm.pt')], '.onnx suffix'),
        'onnx given': (['--weights', str(onnx_file), '--out', str(tmp_path / 'm.onnx')], 'already an ONNX file'),
        'no arch': (['--weights', str(bare), '--out', str(tmp_path / 'm.onnx')], '--network'),
    }[case]
    with pytest.raises(SystemExit) as stop:
        export.main(export.parse_args(argv))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count('\n') == 1 and says in err, err
    assert not (tmp_path / 'm.onnx').exists()
