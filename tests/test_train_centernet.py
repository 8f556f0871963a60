"""train_centernet.py as a user runs it: a few iterations, resume, evaluation only, bad input; and a learning test."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bad_input import bad_weights_files, check_weights_flags, run_main
from common.checkpoint import load_checkpoint
from common.synthetic import make_widerface

REPO = Path(__file__).resolve().parents[1]
SMALL_NET = ['--width-mult', '0.35', '--neck-channels', '16', '--head-conv', '16']


def run(*args, timeout=300):
    env = {**os.environ, 'PYTHONPATH': str(REPO), 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '2')}
    return subprocess.run([sys.executable, str(REPO / 'train_centernet.py'), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def tiny_widerface(tmp_path_factory):
    return make_widerface(tmp_path_factory.mktemp('synthetic') / 'widerface', num_images=12, seed=3)


@pytest.mark.slow
def test_train_resume_and_evaluate(tiny_widerface, tmp_path, capsys):
    """The first run as a user runs it; the resumed run and the evaluation in this process (the same code as the
    command line, without another interpreter's start)."""
    out = tmp_path / 'run'
    common = ['--data-root', tiny_widerface, '--out', out, '--image-size', '96', '--batch-size', '4', '--workers', '0',
              '--device', 'cpu', *SMALL_NET]
    first = run(*common, '--epochs', '1')
    assert first.returncode == 0, first.stderr[-3000:]
    assert (out / 'last.pt').is_file() and (out / 'results.json').is_file()
    state = load_checkpoint(out / 'last.pt')
    assert state['epoch'] == 1 and state['step'] == 3 and state['arch']['name'] == 'centerface'

    status, stdout, err = run_main('train_centernet', [*common, '--epochs', '2', '--resume'], capsys)
    assert status == 0, err[-3000:]
    assert 'resumed from' in stdout
    state = load_checkpoint(out / 'last.pt')
    assert state['epoch'] == 2 and state['step'] == 6
    rows = (out / 'metrics.csv').read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith('epoch,') and 'hm' in rows[0] and 'easy' in rows[0]
    results = json.loads((out / 'results.json').read_text())
    assert set(results) == {'easy', 'medium', 'hard'} and all(0 <= v <= 1 for v in results.values())

    evaluated = tmp_path / 'eval'
    status, _, err = run_main('train_centernet', ['--data-root', tiny_widerface, '--out', evaluated, '--evaluate',
                                                  '--weights', out / 'last.pt', '--device', 'cpu', '--workers', '0'],
                              capsys)
    assert status == 0, err[-3000:]
    assert set(json.loads((evaluated / 'results.json').read_text())) == {'easy', 'medium', 'hard'}
    val_images = (tiny_widerface / 'val' / 'label.txt').read_text().count('#')
    pred_files = list((evaluated / 'predictions').glob('*/*.txt'))
    assert len(pred_files) == val_images
    lines = pred_files[0].read_text().splitlines()
    assert int(lines[1]) == len(lines) - 2  # name, count, then one `x y w h score ...` line per face


def test_missing_data_root_is_one_line_exit_2(tmp_path):
    result = run('--data-root', tmp_path / 'nowhere', '--device', 'cpu', timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count('\n') == 0 and '--data-root' in result.stderr and 'nowhere' in result.stderr


@pytest.mark.parametrize('kind', ['truncated', 'empty', 'jpeg'])
def test_bad_weights_files_are_one_line_exit_2(kind, tiny_widerface, tmp_path, capsys):
    path, says = bad_weights_files(tmp_path)[kind]
    check_weights_flags('train_centernet', path, says, tmp_path, capsys,
                        train_flags=('--data-root', tiny_widerface, '--epochs', 1, '--image-size', 96, '--batch-size',
                                     4, '--workers', 0, '--device', 'cpu', *SMALL_NET),
                        eval_flags=('--data-root', tiny_widerface, '--device', 'cpu'))


@pytest.mark.slow
def test_learns_synthetic_faces(tmp_path):
    """From scratch on 300 synthetic images, 4 epochs at 128 px in batches of 4 (300 steps), the default network and
    recipe, evaluated with the long side at 256 px: CenterFace must find faces it never saw. Measured Medium / Hard
    AP 0.18 / 0.16 (data seed 0, --seed 0; 3 epochs: 0.10 / 0.09) on one thread; with 5 epochs 0.17 / 0.16 (data
    0, --seed 0), 0.35 / 0.28 (data 0, --seed 1), 0.46 / 0.38 (data 1, --seed 1) and 0.33 / 0.28 (data 2, --seed 2);
    after its first epoch (75 steps, in warm-up) 0.001-0.012, and about 0.0 untrained. Steps, not images, set the
    pace here: batches of 16 for 8 epochs at 160 px (152 steps, twice the time) reached only 0.12 / 0.10. Easy (the
    large faces) starts last (0.01-0.45), so the floor is on Medium and Hard; the README's acceptance run (400
    images, 20 epochs at 256 px) reaches Easy 0.92."""
    data = make_widerface(tmp_path / 'widerface', num_images=300, seed=0)
    out = tmp_path / 'run'
    result = run('--data-root', data, '--out', out, '--image-size', '128', '--epochs', '4', '--batch-size', '4',
                 '--workers', '1', '--device', 'cpu', '--eval-every', '0', '--save-every', '0', '--max-size', '256',
                 timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / 'results.json').read_text())
    assert results['medium'] >= 0.06 and results['hard'] >= 0.06, results
