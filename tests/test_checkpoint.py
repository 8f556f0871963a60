"""Checkpoints: atomic writes survive SIGKILL, unsafe files are refused, foreign layouts load, keep-last-N."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from common.checkpoint import (CheckpointError, CheckpointManager, extract_state_dict, load_checkpoint,
                               save_checkpoint, strip_module_prefix)


def test_save_then_load_round_trip(tmp_path):
    state = {'model': {'w': torch.arange(6.0).reshape(2, 3)}, 'epoch': 3, 'args': {'lr': 0.1}, 'arch': {'name': 'x'}}
    save_checkpoint(state, tmp_path / 'a' / 'last.pt')
    back = load_checkpoint(tmp_path / 'a' / 'last.pt')
    assert back['epoch'] == 3 and back['arch'] == {'name': 'x'}
    assert torch.equal(back['model']['w'], state['model']['w'])
    assert not list((tmp_path / 'a').glob('*.tmp')), 'temporary file left behind'


class Payload:
    """Unpickling this would run a shell command: a checkpoint carrying it must be refused."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_pickled_code_payload_is_refused(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pt'
    torch.save({'model': {'w': torch.zeros(1)}, 'extra': Payload(marker)}, path)
    with pytest.raises(CheckpointError, match='refused'):
        load_checkpoint(path)
    assert not marker.exists(), 'the payload ran'


def test_missing_and_corrupt_files_say_which(tmp_path):
    with pytest.raises(CheckpointError, match='not found'):
        load_checkpoint(tmp_path / 'nope.pt')
    bad = tmp_path / 'bad.pt'
    bad.write_bytes(b'this is not a checkpoint')
    with pytest.raises(CheckpointError, match='bad.pt'):
        load_checkpoint(bad)


@pytest.mark.slow
def test_sigkill_while_saving_never_leaves_a_broken_last_pt(tmp_path):
    """A child saves a large checkpoint in a loop; we SIGKILL it at several moments and load last.pt each time."""
    script = textwrap.dedent(f'''
        import sys, torch
        sys.path.insert(0, {str(os.getcwd())!r})
        from common.checkpoint import save_checkpoint
        i = 0
        while True:
            i += 1
            state = {{'model': {{'w': torch.full((4_000_000,), float(i))}}, 'epoch': i}}
            save_checkpoint(state, {str(tmp_path)!r} + '/last.pt')
            print(i, flush=True)
    ''')
    for delay in (0.6, 0.9, 1.3, 1.7):
        child = subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, text=True)
        child.stdout.readline()  # at least one save finished
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        state = load_checkpoint(tmp_path / 'last.pt')
        assert state['model']['w'].shape == (4_000_000,)
        assert torch.all(state['model']['w'] == state['epoch'])


def test_module_prefix_stripped_and_foreign_layouts():
    weights = {'module.body.w': torch.ones(1), 'module.head.b': torch.zeros(1)}
    assert set(strip_module_prefix(weights)) == {'body.w', 'head.b'}
    assert set(extract_state_dict({'state_dict': weights, 'best_acc1': 46.58})) == {'body.w', 'head.b'}
    assert set(extract_state_dict({'model': {'a': torch.ones(1)}, 'epoch': 1})) == {'a'}
    assert set(extract_state_dict(weights)) == {'body.w', 'head.b'}
    with pytest.raises(CheckpointError):
        extract_state_dict({'epoch': 1})


def test_manager_keeps_last_n_and_best(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2, save_every=1)
    for epoch in range(1, 6):
        manager.save({'epoch': epoch}, epoch, is_best=epoch == 3)
    assert sorted(p.name for p in tmp_path.glob('epoch_*.pt')) == ['epoch_4.pt', 'epoch_5.pt']
    assert load_checkpoint(tmp_path / 'best.pt')['epoch'] == 3
    assert load_checkpoint(tmp_path / 'last.pt')['epoch'] == 5
