"""The shared training loop: LR schedules, exact resume, the non-finite guard, and 2-process DDP on CPU."""
import csv
import os
import signal
import subprocess
import sys

import pytest
import torch

from common.checkpoint import load_checkpoint
from common.engine import build_optimizer, build_scheduler, lr_factor


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def run_toy(repo_root, out, *extra, torchrun=0):
    cmd = [sys.executable, str(repo_root / 'tests' / 'toy_train.py'), '--out', str(out), '--device', 'cpu', *extra]
    if torchrun:
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={torchrun}', *cmd[1:]]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_warmup_then_step_decay():
    f = lambda step: lr_factor(step, iters_per_epoch=10, epochs=10, warmup_epochs=2, schedule='step',  # noqa: E731
                               milestones=(5, 8), gamma=0.1)
    assert f(0) == 0.0 and f(10) == pytest.approx(0.5) and f(20) == 1.0
    assert f(49) == 1.0 and f(50) == pytest.approx(0.1) and f(80) == pytest.approx(0.01)


def test_cosine_ends_at_min_and_epoch_granularity_holds_within_epoch():
    f = lambda step, per='iter': lr_factor(step, iters_per_epoch=4, epochs=5, schedule='cosine',  # noqa: E731
                                           min_factor=0.1, per=per)
    assert f(0) == 1.0 and f(20) == pytest.approx(0.1)
    assert f(5) < f(4)  # per iteration it moves inside an epoch
    assert f(5, 'epoch') == f(4, 'epoch') == f(7, 'epoch')


def test_scheduler_state_resumes_the_same_curve():
    kwargs = dict(iters_per_epoch=5, epochs=4, warmup_epochs=1, schedule='cosine')
    opt = build_optimizer(torch.nn.Linear(2, 1), 'sgd', 0.1)
    sched = build_scheduler(opt, **kwargs)
    for _ in range(7):
        opt.step()
        sched.step()
    opt2 = build_optimizer(torch.nn.Linear(2, 1), 'sgd', 0.1)
    sched2 = build_scheduler(opt2, **kwargs)
    sched2.load_state_dict(sched.state_dict())
    opt2.load_state_dict(opt.state_dict())
    for _ in range(5):
        opt.step(), sched.step(), opt2.step(), sched2.step()
        assert opt.param_groups[0]['lr'] == opt2.param_groups[0]['lr']


def test_bad_optimizer_name_exits_2():
    with pytest.raises(SystemExit):
        build_optimizer(torch.nn.Linear(2, 1), 'lion', 0.1)


def test_killed_run_resumes_exactly(tmp_path, repo_root):
    """A run SIGKILLed after epoch 2 and resumed ends identical to an uninterrupted one: same metrics rows (none
    duplicated or lost), same LR curve, same step count and weights."""
    straight, killed = tmp_path / 'straight', tmp_path / 'killed'
    assert run_toy(repo_root, straight, '--epochs', '4').returncode == 0
    cmd = [sys.executable, str(repo_root / 'tests' / 'toy_train.py'), '--out', str(killed), '--device', 'cpu',
           '--epochs', '4', '--sleep-per-step', '0.05']
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in child.stdout:
        if 'epoch 2/4 loss' in line:  # the summary line, printed after the save
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert load_checkpoint(killed / 'last.pt')['epoch'] in (2, 3)
    result = run_toy(repo_root, killed, '--epochs', '4', '--resume')
    assert result.returncode == 0, result.stderr
    assert 'resumed from' in result.stdout
    a, b = rows(straight / 'metrics.csv'), rows(killed / 'metrics.csv')
    assert [r['epoch'] for r in b] == ['1', '2', '3', '4']
    for ra, rb in zip(a, b):
        assert (ra['loss'], ra['lr'], ra['val_mse']) == (rb['loss'], rb['lr'], rb['val_mse'])
    wa, wb = load_checkpoint(straight / 'last.pt'), load_checkpoint(killed / 'last.pt')
    assert wa['epoch'] == wb['epoch'] == 4 and wa['step'] == wb['step'] == 32
    assert torch.equal(wa['model']['weight'], wb['model']['weight'])
    for name in ('loss.png', 'metrics.png', 'args.json', 'results.json', 'epoch_4.pt'):
        assert (killed / name).is_file(), name


def test_resume_without_checkpoint_exits_2(tmp_path, repo_root):
    result = run_toy(repo_root, tmp_path / 'empty', '--resume')
    assert result.returncode == 2 and '--resume' in result.stderr and 'Traceback' not in result.stderr


def test_non_finite_loss_is_skipped_then_stops_the_run(tmp_path, repo_root):
    result = run_toy(repo_root, tmp_path / 'nan', '--epochs', '5', '--nan-at-step', '3')
    assert result.returncode == 1
    assert 'not finite for 20 steps in a row' in result.stderr
    assert 'Traceback' not in result.stderr
    metrics = rows(tmp_path / 'nan' / 'metrics.csv')
    assert int(metrics[0]['skipped_steps']) == 6  # 8 steps per epoch, NaN from step 3 on


def test_two_process_ddp_on_cpu_only_rank0_writes(tmp_path, repo_root):
    out = tmp_path / 'ddp'
    result = run_toy(repo_root, out, '--epochs', '2', torchrun=2)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count('rank-0 world_size=2') == 1  # printed once, by rank 0
    assert sum('epoch 2/2' in line and 'img/s' in line for line in result.stdout.splitlines()) == 1
    metrics = rows(out / 'metrics.csv')
    assert [r['epoch'] for r in metrics] == ['1', '2']  # one writer: no duplicated rows
    # each rank saw half the data: 64 samples / 2 ranks / batch 8 = 4 steps per epoch
    assert load_checkpoint(out / 'last.pt')['step'] == 8
