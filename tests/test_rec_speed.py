"""bench/rec_speed.py runs at small sizes and prints its lines. Speed claims come from running the benchmark itself
(BENCHMARKS.md)."""
import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_runs_small(repo_root, tmp_path):
    proc = subprocess.run([sys.executable, str(repo_root / 'bench' / 'rec_speed.py'), '--images', '96',
                           '--identities', '4', '--batch-size', '32', '--workers', '1', '--rounds', '1',
                           '--startup-images', '300', '--startup-identities', '7', '--work', str(tmp_path)],
                          cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ('imagefolder', 'rec'):
        assert re.search(rf'^images_per_s_{name}: [\d.]+$', proc.stdout, re.M), proc.stdout
    assert re.search(r'^ratio_rec_over_imagefolder: [\d.]+x$', proc.stdout, re.M)
    assert re.search(r'^startup_rec_s: [\d.]+ \(300 images, 7 identities\)$', proc.stdout, re.M), proc.stdout
    assert re.search(r'^startup_imagefolder_s: [\d.]+ \(300 images, 7 identities\)$', proc.stdout, re.M)
