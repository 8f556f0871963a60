"""LR schedules, their resume, optimiser choice and the non-finite-loss guard (common/optimization.py)."""
import pytest
import torch

from common.optimization import NonFiniteGuard, build_optimizer, epoch_schedule, iteration_schedule, lr_factor
from common.runtime import Runtime


def factors(scheduler, steps: int) -> list[float]:
    """The LR multiplier at optimiser steps 0 .. steps - 1 of a schedule."""
    return [scheduler.lr_lambdas[0](step) for step in range(steps)]


def sgd():
    return build_optimizer(torch.nn.Linear(2, 1), 'sgd', 0.1)


def test_warmup_then_step_decay_at_epoch_boundaries():
    f = factors(epoch_schedule(sgd(), iters_per_epoch=10, epochs=10, warmup_epochs=2, milestones=(5, 8)), 100)
    assert f[0] == 0.0 and f[10] == pytest.approx(0.5) and f[20] == 1.0  # the warm-up moves every iteration
    assert f[49] == 1.0 and f[50] == pytest.approx(0.1) and f[80] == pytest.approx(0.01)


def test_cosine_ends_at_zero_and_holds_within_an_epoch():
    assert lr_factor(0, total=5, schedule='cosine') == 1.0 and lr_factor(2.5, total=5, schedule='cosine') == 0.5
    assert lr_factor(5, total=5, schedule='cosine') == pytest.approx(0.0)
    f = factors(epoch_schedule(sgd(), iters_per_epoch=4, epochs=5, schedule='cosine'), 20)
    assert f[4] == f[5] == f[7] and f[8] < f[7]  # the epoch schedule changes the LR at epoch boundaries only


def test_iteration_schedule_counts_iterations():
    f = factors(iteration_schedule(sgd(), iterations=1000, warmup_iterations=10, milestones=(150, 300)), 400)
    assert f[5] == pytest.approx(0.5) and f[10] == 1.0
    assert f[149] == 1.0 and f[150] == pytest.approx(0.1) and f[300] == pytest.approx(0.01)


def test_scheduler_state_resumes_the_same_curve():
    kwargs = dict(iters_per_epoch=5, epochs=4, warmup_epochs=1, schedule='cosine')
    opt = sgd()
    sched = epoch_schedule(opt, **kwargs)
    for _ in range(7):
        opt.step()
        sched.step()
    opt2 = sgd()
    sched2 = epoch_schedule(opt2, **kwargs)
    sched2.load_state_dict(sched.state_dict())
    opt2.load_state_dict(opt.state_dict())
    for _ in range(5):
        opt.step(), sched.step(), opt2.step(), sched2.step()
        assert opt.param_groups[0]['lr'] == opt2.param_groups[0]['lr']


@pytest.mark.parametrize('call', [lambda: build_optimizer(torch.nn.Linear(2, 1), 'lion', 0.1),
                                  lambda: epoch_schedule(sgd(), iters_per_epoch=1, epochs=1, schedule='linear')])
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
