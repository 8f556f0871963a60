"""LR schedules, their resume, optimiser choice and the non-finite-loss guard (common/optimization.py)."""
import pytest
import torch

from common.optimization import NonFiniteGuard, build_optimizer, build_scheduler, lr_factor
from common.runtime import Runtime


def test_warmup_then_step_decay():
    f = lambda step: lr_factor(step, iters_per_epoch=10, epochs=10, warmup_epochs=2, schedule='step',  # noqa: E731
                               milestones=(5, 8), gamma=0.1)
    assert f(0) == 0.0 and f(10) == pytest.approx(0.5) and f(20) == 1.0
    assert f(49) == 1.0 and f(50) == pytest.approx(0.1) and f(80) == pytest.approx(0.01)


def test_cosine_ends_at_zero_and_epoch_granularity_holds_within_epoch():
    f = lambda step, per='iter': lr_factor(step, iters_per_epoch=4, epochs=5, schedule='cosine', per=per)  # noqa: E731
    assert f(0) == 1.0 and f(10) == pytest.approx(0.5) and f(20) == pytest.approx(0.0)
    assert f(5) < f(4)  # per iteration it moves inside an epoch
    assert f(5, 'epoch') == f(4, 'epoch') == f(7, 'epoch')


def test_milestones_in_iterations():
    f = lambda step: lr_factor(step, iters_per_epoch=1, epochs=1000, milestones=(150, 300))  # noqa: E731
    assert f(149) == 1.0 and f(150) == pytest.approx(0.1) and f(300) == pytest.approx(0.01)


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


@pytest.mark.parametrize('call', [lambda: build_optimizer(torch.nn.Linear(2, 1), 'lion', 0.1),
                                  lambda: lr_factor(0, iters_per_epoch=1, epochs=1, schedule='linear')])
def test_unknown_names_exit_2_naming_the_flag(call, capsys):
    with pytest.raises(SystemExit) as stop:
        call()
    assert stop.value.code == 2 and capsys.readouterr().err.startswith('error: --')


def test_non_finite_guard_skips_counts_and_stops(capsys):
    guard, rt = NonFiniteGuard(max_in_a_row=3), Runtime(device=torch.device('cpu'))
    assert guard.check(torch.tensor(1.0), rt)
    assert not guard.check(torch.tensor(float('nan')), rt) and not guard.check(torch.tensor(float('inf')), rt)
    assert guard.check(torch.tensor(2.0), rt) and guard.skipped == 2  # a finite step resets the run of skips
    guard.check(torch.tensor(float('nan')), rt), guard.check(torch.tensor(float('nan')), rt)
    with pytest.raises(SystemExit) as stop:
        guard.check(torch.tensor(float('nan')), rt)
    assert stop.value.code == 1 and 'not finite for 3 steps in a row' in capsys.readouterr().err
