"""The run directory: next free name beside an earlier run, reuse of an empty one, --exist-ok, --resume, two runs
claiming the same name at the same moment, and the path broadcast from rank 0 under torchrun."""
import multiprocessing
import os
import shutil
import socket
import sys

import pytest
import torch
import torch.distributed as dist

from common.run_dir import LOCK, claim_run_dir
from common.runtime import Runtime


def finished_run(folder, name='last.pt'):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b'weights')
    return folder


def test_a_new_name_is_created_and_claimed(tmp_path):
    path, line = claim_run_dir(tmp_path / 'runs' / 'retinaface')
    assert path == tmp_path / 'runs' / 'retinaface' and (path / LOCK).is_file()
    assert line == f'run directory: {path}'


@pytest.mark.parametrize('held', ['last.pt', 'best.pt', 'metrics.csv', 'results.json'])
def test_a_run_there_sends_the_new_run_to_the_next_free_name(tmp_path, held):
    first = finished_run(tmp_path / 'retinaface', held)
    path, line = claim_run_dir(first)
    assert path == tmp_path / 'retinaface2'
    assert line == f'run directory: {path} ({first} holds a run; --exist-ok overwrites it)'
    assert sorted(p.name for p in first.iterdir()) == [held]  # the first run untouched, nothing added
    assert claim_run_dir(first)[0] == tmp_path / 'retinaface3'  # retinaface2 is claimed now
    shutil.rmtree(tmp_path / 'retinaface2')  # a gap is filled first
    assert claim_run_dir(first)[0] == tmp_path / 'retinaface2'


def test_a_name_ending_in_a_digit_counts_after_a_dash(tmp_path):
    first = finished_run(tmp_path / 'voc07')
    assert claim_run_dir(first)[0] == tmp_path / 'voc07-2'
    assert claim_run_dir(first)[0] == tmp_path / 'voc07-3'
    assert claim_run_dir(finished_run(tmp_path / 'retinaface2'))[0] == tmp_path / 'retinaface2-2'


def test_an_existing_empty_directory_is_reused(tmp_path):
    empty = tmp_path / 'runs' / 'centerface'
    empty.mkdir(parents=True)
    assert claim_run_dir(empty)[0] == empty


def test_a_run_in_its_first_epoch_is_skipped_and_a_dead_ones_folder_reused(tmp_path):
    """args.json and the lock file only: while its run lives (this process holds the lock) the folder is skipped;
    once the run has ended without a checkpoint (a process that claimed it and exited) it is used again."""
    first, _ = claim_run_dir(tmp_path / 'extractor')
    (first / 'args.json').write_text('{}')
    path, line = claim_run_dir(first)
    assert path == tmp_path / 'extractor2' and f'{first} is in use by another run' in line
    path, line = claim_run_dir(first, exist_ok=True)
    assert path == first and line.endswith('(--exist-ok: another run is writing there too)')

    dead = tmp_path / 'died'
    context = multiprocessing.get_context('fork' if sys.platform == 'linux' else 'spawn')
    child = context.Process(target=claim_run_dir, args=(dead,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0 and (dead / LOCK).is_file()
    (dead / 'args.json').write_text('{}')
    assert claim_run_dir(dead) == (dead, f'run directory: {dead}')


def test_exist_ok_writes_into_the_run_as_given(tmp_path):
    first = finished_run(tmp_path / 'retinanet')
    path, line = claim_run_dir(first, exist_ok=True)
    assert path == first and (first / 'last.pt').read_bytes() == b'weights'
    assert line == f'run directory: {first} (--exist-ok: writing over the run there)'
    assert not (tmp_path / 'retinanet2').exists()
    assert claim_run_dir(tmp_path / 'new', exist_ok=True) == (tmp_path / 'new', f'run directory: {tmp_path / "new"}')


def test_resume_continues_in_out_as_given(tmp_path):
    first = finished_run(tmp_path / 'recognition')
    path, line = claim_run_dir(first, resume=True)
    assert path == first and line == f'run directory: {first} (--resume)'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['recognition']


def test_a_file_at_out_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / 'runs').write_text('not a folder')
    for out, flags in ((tmp_path / 'runs', {}), (tmp_path / 'runs', {'exist_ok': True}),
                       (tmp_path / 'runs' / 'retinaface', {})):
        with pytest.raises(SystemExit) as e:
            claim_run_dir(out, **flags)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count('\n') == 1 and '--out' in err and str(out) in err, err


def _claim_in_rounds(base, rounds, barrier, results):
    for r in range(rounds):
        barrier.wait()  # every process asks for the same name at the same moment
        results.put((r, str(claim_run_dir(base / f'round{r}' / 'run')[0])))


def test_runs_started_at_the_same_moment_never_share_a_directory(tmp_path):
    """4 processes, 40 rounds: in each round all ask for the same --out at once; each gets its own directory."""
    processes, rounds = 4, 40
    context = multiprocessing.get_context('fork' if sys.platform == 'linux' else 'spawn')
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_claim_in_rounds, args=(tmp_path, rounds, barrier, results))
               for _ in range(processes)]
    for w in workers:
        w.start()
    claimed = [results.get(timeout=60) for _ in range(processes * rounds)]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    for r in range(rounds):
        paths = sorted(path for round_, path in claimed if round_ == r)
        run = tmp_path / f'round{r}' / 'run'
        assert paths == sorted(map(str, [run, run.with_name('run2'), run.with_name('run3'), run.with_name('run4')]))


def _rank(rank, world_size, init, out, results):
    dist.init_process_group('gloo', init_method=init, rank=rank, world_size=world_size)
    try:
        rt = Runtime(device=torch.device('cpu'), rank=rank, world_size=world_size)
        path, line = claim_run_dir(out, rt=rt)
        results.put((rank, str(path), line))
    finally:
        dist.destroy_process_group()


def run_two_ranks(out):
    """claim_run_dir(out) in two gloo processes: their exit codes and what each returned."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        init = f'tcp://127.0.0.1:{s.getsockname()[1]}'
    context = multiprocessing.get_context('fork' if sys.platform == 'linux' else 'spawn')  # fork: no torch import
    results = context.Queue()
    ranks = [context.Process(target=_rank, args=(rank, 2, init, out, results)) for rank in range(2)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(timeout=60)
        if p.is_alive():  # a rank left waiting: fail the test, leave no process behind
            p.kill()
            p.join()
    got = []
    while not results.empty():
        got.append(results.get(timeout=5))
    return [p.exitcode for p in ranks], sorted(got)


def test_under_torchrun_rank_0_claims_and_the_others_learn_the_path(tmp_path):
    """Two gloo processes beside a finished run: both write to out2, and only one directory was made. When rank 0
    cannot claim (--out is a file) both stop with status 2; rank 1 does not wait forever."""
    out = finished_run(tmp_path / 'retinaface')
    exitcodes, got = run_two_ranks(out)
    assert exitcodes == [0, 0]
    assert [path for _, path, _ in got] == [str(tmp_path / 'retinaface2')] * 2
    assert got[0][2] == got[1][2] and 'holds a run' in got[0][2]
    assert sorted(os.listdir(tmp_path)) == ['retinaface', 'retinaface2']

    (tmp_path / 'a_file').write_text('')
    assert run_two_ranks(tmp_path / 'a_file') == ([2, 2], [])


# ---------------------------------------------------------------------------------------------------- the scripts


@pytest.fixture(scope='module')
def tiny_flags(tmp_path_factory):
    """flags(script): the smallest data and settings each training script runs on (a few seconds a run); each data
    set is made when a script first needs it."""
    from common import synthetic
    root, made = tmp_path_factory.mktemp('data'), {}

    def data(kind, **options):
        if kind not in made:
            made[kind] = synthetic.KINDS[kind](root / kind, **options)
        return made[kind]

    def flags(script):
        cpu = ['--workers', 0, '--device', 'cpu', '--batch-size', 2]
        face_eval = ['--test-size', 64, '--max-size', 64, '--top-k', 50, '--keep-top-k', 20]
        if script in ('finetune_retinaface', 'train_centernet'):
            network = ['--warmup-epochs', 0] if script == 'finetune_retinaface' else [
                '--width-mult', 0.35, '--neck-channels', 16, '--head-conv', 16]
            return ['--data-root', data('widerface', num_images=4, seed=3), '--image-size', 64, '--epochs', 1,
                    *network, *cpu, *face_eval]
        if script == 'train_recognition':
            people = data('identities', seed=2, identities=2, images_per_identity=2, test_identities=20,
                          test_images_per_identity=2, pairs_per_set=1)
            return ['--data-root', people / 'train', '--test-root', people / 'test', '--test-list',
                    people / 'pairs.txt', '--epochs', 1, '--no-flip', '--embedding-size', 16, *cpu]
        if script == 'pretrain_extractor':
            return ['--data-root', data('imagefolder', num_images=12, seed=2, size=32), '--arch', 'resnet18',
                    '--image-size', 32, '--iterations', 2, '--lr', 0.01, *cpu, '--batch-size', 4]
        return ['--data-root', data('voc', num_images=6, seed=1), '--years', 2007, '--arch', 'resnet18',
                '--fpn-channels', 16, '--size', 64, '--epochs', 1, '--top-k', 50, '--eval-batch-size', 2, *cpu]

    return flags


def files_of(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize('script', ['finetune_retinaface', 'train_centernet', 'train_recognition', 'pretrain_extractor',
                                    'train_retinanet'])
def test_a_second_run_beside_a_finished_one_leaves_it_whole(script, tiny_flags, tmp_path, capsys):
    """The same command twice: the second run writes to OUT2 and says so first; the first run's files, checkpoints
    and metrics.csv among them, stay byte for byte. --exist-ok writes over the first run; --resume continues in it.
    (Each run is the script's main() in this process: the code the command line runs, without the start-up.)"""
    from bad_input import run_main
    from common.checkpoint import load_checkpoint
    from common.run_dir import release_claims

    def run(*flags):
        status, printed, err = run_main(script, ['--out', out, *tiny_flags(script), *flags], capsys)
        release_claims()  # what the end of a run's process does
        assert status == 0, err[-3000:]
        return printed.splitlines()[0]

    out = tmp_path / 'run'
    assert run() == f'run directory: {out}'
    first = files_of(out)
    assert {'last.pt', 'metrics.csv'} <= {p.name for p in first}

    assert run() == f'run directory: {out}2 ({out} holds a run; --exist-ok overwrites it)'
    assert files_of(out) == first
    assert load_checkpoint(tmp_path / 'run2' / 'last.pt')['args']['out'] == str(tmp_path / 'run2')

    written = (out / 'last.pt').stat().st_ino
    assert run('--exist-ok') == f'run directory: {out} (--exist-ok: writing over the run there)'
    assert (out / 'last.pt').stat().st_ino != written  # a new file put in its place
    assert run('--resume') == f'run directory: {out} (--resume)'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['run', 'run2']
