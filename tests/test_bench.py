"""bench/detect_speed.py runs as documented: the reference-style baseline beside RetinaFace weights (and agrees with
it), a CenterFace checkpoint compared with RetinaFace at the same input size. Only the output is checked here;
speed claims come from running the benchmark itself (BENCHMARKS.md)."""
import re
import subprocess
import sys

import cv2
import pytest
import torch

from common.models import build_model


def run_bench(repo_root, *args):
    return subprocess.run([sys.executable, str(repo_root / 'bench' / 'detect_speed.py'), '--device', 'cpu',
                           '--repeats', '1', '--threads', '1', *map(str, args)],
                          cwd=repo_root, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_retinaface_against_reference_and_centerface_compared(repo_root, shared_data, tmp_path):
    source = tmp_path / 'photos'
    source.mkdir()
    photo = cv2.imread(str(shared_data / 'photos' / 'group_6_faces.jpg'))
    cv2.imwrite(str(source / 'group.jpg'), cv2.resize(photo, (480, 332)))
    # a crowd of small faces, resized: NMS must run in the image's own pixels, as the reference's +1 pixel IoU does
    (source / 'crowd.jpg').write_bytes((shared_data / 'photos' / 'crowd_1024x624.jpg').read_bytes())
    weights = shared_data / 'weights' / 'retinaface_mobilenet0.25_Final.pth'

    proc = run_bench(repo_root, '--weights', weights, '--network', 'mobile0.25', '--source', source,
                     '--max-size', 640)
    assert proc.returncode == 0, proc.stderr[-3000:]
    agreement = re.search(r'agreement: max count difference (\d+), unmatched (\d+), box ([\d.]+) px, '
                          r'landmarks ([\d.]+) px, score ([\d.]+)', proc.stdout)
    assert agreement, proc.stdout
    count, unmatched, box, landmarks, score = map(float, agreement.groups())
    assert count == 0 and unmatched == 0 and box < 1.5 and landmarks < 1.5 and score < 2e-3
    assert re.search(r'^speedup: [\d.]+x', proc.stdout, re.M)
    assert re.search(r'median_ms_per_image: [\d.]+\s*$', proc.stdout)

    torch.manual_seed(0)
    arch = {'name': 'centerface', 'width_mult': 0.35, 'neck_channels': 16, 'head_conv': 16}
    checkpoint = tmp_path / 'centerface.pt'
    torch.save({'model': build_model(arch).state_dict(), 'arch': arch}, checkpoint)
    proc = run_bench(repo_root, '--weights', checkpoint, '--compare', weights, '--compare-network', 'mobile0.25',
                     '--source', source, '--max-size', 320)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'ours (centerface 0.35)' in proc.stdout and 'compare (retinaface mobile0.25)' in proc.stdout
    assert 'reference-style baseline' not in proc.stdout  # that baseline exists for RetinaFace weights only
    assert re.search(r'^ratio_compare_over_ours: [\d.]+x', proc.stdout, re.M)
