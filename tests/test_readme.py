"""What README.md shows must work as shown: the "Hack it" diff applies to a fresh copy of finetune_retinaface.py,
and the copy trains with it."""
import os
import shutil
import subprocess
import sys

import pytest

from common.checkpoint import load_checkpoint
from common.synthetic import make_widerface


def readme_block(repo_root, heading: str, language: str) -> str:
    section = (repo_root / 'README.md').read_text().split(f'\n## {heading}\n', 1)[1].split('\n## ', 1)[0]
    return section.split(f'```{language}\n', 1)[1].split('```', 1)[0]


@pytest.mark.skipif(shutil.which('patch') is None, reason='needs the patch program')
@pytest.mark.slow
def test_hack_it_gradient_accumulation_diff_applies_and_trains(tmp_path, repo_root):
    (tmp_path / 'accumulate.diff').write_text(readme_block(repo_root, 'Hack it', 'diff'))
    shutil.copy(repo_root / 'finetune_retinaface.py', tmp_path)
    patched = subprocess.run(['patch', '-p0', '--forward', '-o', 'finetune_retinaface_accumulate.py', '-i',
                              'accumulate.diff', 'finetune_retinaface.py'], cwd=tmp_path, capture_output=True,
                             text=True)
    assert patched.returncode == 0, patched.stdout + patched.stderr
    assert 'fuzz' not in patched.stdout and 'offset' not in patched.stdout, patched.stdout  # the diff is current

    data = make_widerface(tmp_path / 'data', num_images=24, seed=3)
    out = tmp_path / 'run'
    env = {**os.environ, 'PYTHONPATH': str(repo_root), 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '2')}
    result = subprocess.run([sys.executable, str(tmp_path / 'finetune_retinaface_accumulate.py'), '--data-root',
                             str(data), '--out', str(out), '--epochs', '1', '--batch-size', '4', '--accumulate', '2',
                             '--image-size', '96', '--workers', '0', '--device', 'cpu', '--eval-every', '0'],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_checkpoint(out / 'last.pt')['step'] == 3  # 24 images / batch 4 = 6 batches, a step every 2
