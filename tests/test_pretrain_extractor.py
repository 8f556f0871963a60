"""pretrain_extractor.py as users run it: killed inside an epoch and resumed to the same weights bit for bit,
evaluation only, its checkpoint as train_retinanet.py's --pretrained-extractor; bad input; a learning test."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from bad_input import main_exit
from common.checkpoint import load_checkpoint
from common.synthetic.objects import make_imagefolder, make_voc

# 24 train images / batch 4: 6 iterations an epoch; the save at iteration 3 is in the middle of one
TINY = ('--arch', 'resnet18', '--image-size', '32', '--batch-size', '4', '--workers', '0', '--device', 'cpu',
        '--save-every', '3', '--eval-every', '4', '--log-every', '2', '--lr-steps', '5', '--lr', '0.01',
        '--eval-batch-size', '8')


@pytest.fixture(scope='module')
def tiny_folder(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp('objects'), num_images=24, seed=2, size=48)


@pytest.fixture(scope='module')
def straight_run(tiny_folder, tmp_path_factory):
    """An uninterrupted 8-iteration run (two passes over the data, the second cut short)."""
    import pretrain_extractor
    out = tmp_path_factory.mktemp('straight')
    pretrain_extractor.main(pretrain_extractor.parse_args(
        [str(a) for a in ('--data-root', tiny_folder, '--out', out, '--iterations', 8, *TINY)]))
    return out


@pytest.mark.slow
def test_killed_inside_an_epoch_resumes_bit_exact(tiny_folder, straight_run, tmp_path, repo_root, capsys):
    killed = tmp_path / 'killed'
    child = subprocess.Popen([sys.executable, str(repo_root / 'pretrain_extractor.py'), '--data-root',
                              str(tiny_folder), '--out', str(killed), '--iterations', '8', *TINY],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=repo_root,
                             env={**os.environ, 'OMP_NUM_THREADS': str(torch.get_num_threads())})  # same sums as here
    for line in child.stdout:
        if line.startswith('iteration 3/8'):  # printed after the checkpoint of iteration 3 is written
            child.send_signal(signal.SIGKILL)
            break
    child.wait()
    assert load_checkpoint(killed / 'last.pt')['step'] == 3
    status, err = main_exit('pretrain_extractor', ['--data-root', tiny_folder, '--out', killed, '--iterations', 8,
                                                   *TINY, '--resume'], capsys)
    assert status == 0, err
    a, b = load_checkpoint(straight_run / 'last.pt'), load_checkpoint(killed / 'last.pt')
    assert a['step'] == b['step'] == 8 and a['epoch'] == b['epoch'] == 1
    assert a['arch'] == {'name': 'extractor', 'backbone': 'resnet18', 'num_classes': 6, 'classes': a['arch']['classes']}
    for key, value in a['model'].items():
        assert torch.equal(value, b['model'][key]), key
    rows_a = (straight_run / 'metrics.csv').read_text().splitlines()
    rows_b = (killed / 'metrics.csv').read_text().splitlines()
    # rows at iterations 2, 3 (save), 4 (evaluation), 6, 8: loss and accuracy equal, none lost or repeated
    assert [r.split(',')[:4] for r in rows_a] == [r.split(',')[:4] for r in rows_b] and len(rows_a) == 6
    results = json.loads((straight_run / 'results.json').read_text())
    assert set(results) == {'top1', 'top5'} and 0 <= results['top1'] <= results['top5'] <= 1
    assert results == json.loads((killed / 'results.json').read_text())
    for name in ('iter_3.pt', 'iter_6.pt', 'loss.png', 'metrics.png', 'args.json'):
        assert (killed / name).is_file(), name


def test_evaluate_only_and_bad_input(tiny_folder, straight_run, tmp_path, capsys):
    out = tmp_path / 'eval'
    status, err = main_exit('pretrain_extractor', ['--data-root', tiny_folder, '--out', out, '--evaluate',
                                                   '--weights', straight_run / 'last.pt', '--device', 'cpu',
                                                   '--image-size', 32, '--workers', 0], capsys)
    assert status == 0, err
    assert json.loads((out / 'results.json').read_text()) == json.loads((straight_run / 'results.json').read_text())
    status, err = main_exit('pretrain_extractor', ['--data-root', tmp_path / 'nowhere', '--out', out, *TINY], capsys)
    assert status == 2 and '--data-root' in err and 'nowhere' in err and err.count('\n') == 1
    status, err = main_exit('pretrain_extractor', ['--data-root', tiny_folder, '--out', out, *TINY,
                                                   '--batch-size', 100], capsys)
    assert status == 2 and '--batch-size 100' in err


def test_lr_steps_default_to_the_tutorials_iterations(tiny_folder, straight_run, tmp_path, capsys):
    """Without --lr-steps the drops fall at the tutorial's 150k / 300k / 550k iterations, not at fractions of
    --iterations: a short run keeps its peak LR to the end (the straight run's --lr-steps 5 does drop)."""
    out = tmp_path / 'defaults'
    at = TINY.index('--lr-steps')
    tiny = TINY[:at] + TINY[at + 2:]  # the flag and its value
    status, err = main_exit('pretrain_extractor', ['--data-root', tiny_folder, '--out', out, '--iterations', 8,
                                                   '--warmup-iterations', 0, *tiny], capsys)
    assert status == 0, err
    lrs = [row['lr'] for row in load_checkpoint(out / 'last.pt')['metrics']]
    assert len(lrs) >= 4 and all(lr == pytest.approx(0.01) for lr in lrs), lrs
    dropped = [row['lr'] for row in load_checkpoint(straight_run / 'last.pt')['metrics']]
    assert dropped[-1] == pytest.approx(0.001), dropped


def test_detector_starts_from_the_pretrained_extractor(straight_run, tmp_path, capsys):
    """train_retinanet.py --pretrained-extractor loads this script's checkpoint (its classifier dropped); with a
    zero LR and frozen BatchNorm the detector's extractor ends exactly as pretrained."""
    voc = make_voc(tmp_path / 'voc', num_images=6, seed=1)
    out = tmp_path / 'detector'
    status, err = main_exit('train_retinanet', [
        '--data-root', voc, '--out', out, '--years', 2007, '--arch', 'resnet18', '--fpn-channels', 16, '--size', 64,
        '--batch-size', 2, '--epochs', 1, '--workers', 0, '--device', 'cpu', '--eval-every', 0,
        '--pretrained-extractor', straight_run / 'last.pt', '--freeze-bn', '--lr', 0, '--weight-decay', 0], capsys)
    assert status == 0, err
    pretrained = load_checkpoint(straight_run / 'last.pt')['model']
    detector = load_checkpoint(out / 'last.pt')['model']
    assert 'fc.weight' in pretrained
    for key, value in pretrained.items():
        if not key.startswith('fc.'):
            assert torch.equal(detector[f'extractor.{key}'], value), key


@pytest.mark.slow
def test_learns_synthetic_objects(tmp_path, repo_root):
    """From scratch on 240 synthetic object images at 48 px: well above chance (1/6) on val within CI time
    (measured 0.53-0.62 over two data and two training seeds, README). 80 iterations need their own recipe: SGD at
    the default LR with drops at 1/4 and 1/2 of them measured 0.38-0.43 here; AdamW 2e-3 with one drop at iteration
    60 learns in the budget."""
    data = make_imagefolder(tmp_path / 'objects', num_images=240, seed=0, size=64)
    out = tmp_path / 'learn'
    result = subprocess.run([sys.executable, str(repo_root / 'pretrain_extractor.py'), '--data-root', str(data),
                             '--out', str(out), '--arch', 'resnet18', '--image-size', '48', '--iterations', '80',
                             '--batch-size', '16', '--optimizer', 'adamw', '--lr', '2e-3', '--weight-decay', '0.05',
                             '--lr-steps', '60', '--workers', '0', '--device', 'cpu'],
                            capture_output=True, text=True, cwd=repo_root, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / 'results.json').read_text())
    assert results['top1'] >= 0.35, results
