"""bench/cuda_run.py, the prepared GPU measurement, runs end to end on the CPU with --tiny: every section has run
before a GPU is lent (its numbers mean nothing here)."""
import json
import subprocess
import sys

import pytest

SCRIPTS = {'finetune_retinaface.py', 'train_centernet.py', 'train_recognition.py', 'pretrain_extractor.py',
           'train_retinanet.py'}


def run(repo_root, out, *flags):
    proc = subprocess.run([sys.executable, str(repo_root / 'bench' / 'cuda_run.py'), '--tiny', '--device', 'cpu',
                           '--threads', '2', '--out', str(out), *flags],
                          cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


@pytest.mark.slow
def test_tiny_run_fills_every_section_of_the_table(repo_root, tmp_path):
    printed, result = run(repo_root, tmp_path / 'table.json')
    rows = result['rows']
    assert not [r for r in rows if r['what'] == 'failed'], rows
    train = [r for r in rows if r['section'] == 'train']
    assert {r['what'] for r in train} == SCRIPTS
    assert {(r['what'], r['variant']) for r in train} == {(s, v) for s in SCRIPTS
                                                          for v in ('NCHW fp32', 'channels_last fp32')}
    assert all(r['images_per_s'] > 0 for r in train)
    reference = {r['variant']: r for r in rows if r['section'] == 'reference'}
    assert set(reference) == {'reference (Pytorch_Retinaface steps)', 'ours NCHW fp32'}
    assert reference['ours NCHW fp32']['ratio'] == pytest.approx(
        reference['ours NCHW fp32']['images_per_s'] / reference['reference (Pytorch_Retinaface steps)']['images_per_s'])
    (torchrun,) = [r for r in rows if r['section'] == 'torchrun']
    assert torchrun['variant'] == 'skipped' and '2 GPUs' in torchrun['note']  # no GPU here: one line says so
    assert [r['batch'] for r in rows if r['section'] == 'detect'] == [1, 2]
    assert result['machine']['device'] == 'cpu' and result['tiny']
    for row in train + list(reference.values()):  # the printed table holds every row
        assert f'{row["images_per_s"]:.1f}' in printed


@pytest.mark.slow
def test_torchrun_section_runs_two_processes_with_gloo_on_the_cpu(repo_root, tmp_path):
    _, result = run(repo_root, tmp_path / 'ddp.json', '--sections', 'torchrun', '--ddp-on-cpu')
    rows = result['rows']
    assert [r['variant'] for r in rows] == ['1 process, gloo on the CPU', '2 processes, gloo on the CPU'], rows
    assert all(r['images_per_s'] > 0 for r in rows)
