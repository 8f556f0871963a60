"""detect.py as a user runs it: the shared Pytorch_Retinaface checkpoint on a real photo among files that are not
images, txt results in the WIDER layout with landmarks, our checkpoint format, batches, a video, bad paths."""
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

MNET = {'name': 'retinaface', 'network': 'mobile0.25'}


def run_detect(repo_root, *args):
    return subprocess.run([sys.executable, str(repo_root / 'detect.py'), '--device', 'cpu', *map(str, args)],
                          cwd=repo_root, capture_output=True, text=True, timeout=300)


def detect_here(capsys, *args):
    """detect.py's main in this process (the code the command line runs, without another interpreter's start) ->
    (exit status, stdout, stderr)."""
    from bad_input import run_main
    return run_main('detect', ['--device', 'cpu', *args], capsys)


def read_txt(path):
    lines = path.read_text().splitlines()
    rows = np.array([[float(v) for v in line.split()] for line in lines[2:]]).reshape(-1, 15)
    return lines, rows


@pytest.fixture
def weights(shared_data):
    return shared_data / 'weights' / 'retinaface_mobilenet0.25_Final.pth'


def test_folder_with_non_images_and_txt_format(repo_root, shared_data, weights, tmp_path):
    source = tmp_path / 'photos'
    source.mkdir()
    shutil.copy(shared_data / 'photos' / 'group_6_faces.jpg', source)
    (source / 'notes.txt').write_text('not a picture')
    (source / 'broken.jpg').write_bytes(b'\xff\xd8 this is not a jpeg')
    out = tmp_path / 'out'
    proc = run_detect(repo_root, '--weights', weights, '--network', 'mobile0.25', '--source', source, '--out', out,
                      '--save-txt')
    assert proc.returncode == 0, proc.stderr
    assert 'notes.txt' in proc.stdout and 'broken.jpg' in proc.stdout and '2 skipped' in proc.stdout
    for stage in ('read', 'preprocess', 'forward', 'postprocess'):
        assert stage in proc.stdout

    lines, rows = read_txt(out / 'group_6_faces.txt')
    assert lines[0] == 'group_6_faces.jpg' and lines[1] == '6' and len(rows) == 6
    assert all('.' in value for line in lines[2:] for value in line.split())  # at least one decimal everywhere
    x, y, w, h, score = rows[:, :5].T
    assert (w > 60).all() and (h > 60).all() and (score > 0.9).all()
    assert (np.diff(score) <= 0).all()  # best first
    points = rows[:, 5:].reshape(-1, 5, 2)
    assert ((points[..., 0] >= x[:, None]) & (points[..., 0] <= (x + w)[:, None])).all()
    assert ((points[..., 1] >= y[:, None]) & (points[..., 1] <= (y + h)[:, None])).all()

    annotated = cv2.imread(str(out / 'group_6_faces.jpg'))
    original = cv2.imread(str(source / 'group_6_faces.jpg'))
    assert annotated.shape == original.shape and np.abs(annotated.astype(int) - original).sum() > 0
    assert not (out / 'notes.txt').exists() and not (out / 'broken.txt').exists()


@pytest.mark.slow
def test_our_checkpoint_batches_and_video(shared_data, weights, tmp_path, capsys):
    state = torch.load(weights, map_location='cpu', weights_only=True)
    checkpoint = tmp_path / 'best.pt'
    torch.save({'model': state, 'arch': MNET, 'epoch': 1}, checkpoint)
    photo = cv2.imread(str(shared_data / 'photos' / 'group_6_faces.jpg'))
    source = tmp_path / 'photos'
    source.mkdir()
    cv2.imwrite(str(source / 'a_big.png'), photo)
    cv2.imwrite(str(source / 'b_small.png'), cv2.resize(photo, (640, 443)))

    status, _, err = detect_here(capsys, '--weights', checkpoint, '--source', source / 'a_big.png', '--out',
                                 tmp_path / 'single', '--save-txt', '--no-save')
    assert status == 0, err[-3000:]
    status, _, err = detect_here(capsys, '--weights', checkpoint, '--source', source, '--out', tmp_path / 'batched',
                                 '--save-txt', '--batch-size', '2')
    assert status == 0, err[-3000:]
    _, alone = read_txt(tmp_path / 'single' / 'a_big.txt')
    _, together = read_txt(tmp_path / 'batched' / 'a_big.txt')
    assert len(alone) == len(together) == 6  # the larger image needs no padding: same detections in a batch
    assert np.abs(alone - together).max() < 0.2
    _, small = read_txt(tmp_path / 'batched' / 'b_small.txt')
    by_x = lambda rows: rows[np.argsort(rows[:, 0])]  # noqa: E731  (close scores may swap the order)
    assert len(small) == 6 and np.abs(by_x(small)[:, :4] * 2 - by_x(alone)[:, :4]).max() < 12  # its own pixels
    assert not (tmp_path / 'single' / 'a_big.png').exists()  # --no-save

    video = tmp_path / 'clip.mp4'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'mp4v'), 5, (640, 443))
    if not writer.isOpened():
        pytest.skip('this OpenCV build cannot write mp4 files')
    small_frame = cv2.resize(photo, (640, 443))
    for _ in range(3):
        writer.write(small_frame)
    writer.release()
    status, stdout, err = detect_here(capsys, '--weights', checkpoint, '--source', video, '--out', tmp_path / 'video',
                                      '--max-frames', '2')
    assert status == 0, err[-3000:]
    assert '2 images' in stdout and (tmp_path / 'video' / 'clip.mp4').stat().st_size > 0


@pytest.mark.slow
def test_images_without_faces_and_untrained_checkpoint(repo_root, tmp_path):
    """An image where no face passes the threshold is ordinary input: its txt file (count 0) and drawn copy are
    written like any other; files that are not images are named and skipped; exit 0."""
    torch.manual_seed(0)
    from common.models.retinaface import RetinaFace
    checkpoint = tmp_path / 'untrained.pt'
    torch.save({'model': RetinaFace('mobile0.25').state_dict(), 'arch': MNET}, checkpoint)
    source = tmp_path / 'photos'
    source.mkdir()
    cv2.imwrite(str(source / 'blank.jpg'), np.full((120, 160, 3), 127, np.uint8))
    cv2.imwrite(str(source / 'noise.png'), np.random.default_rng(0).integers(0, 256, (90, 70, 3), dtype=np.uint8))
    (source / 'readme.md').write_text('not a picture')
    out = tmp_path / 'out'
    proc = run_detect(repo_root, '--weights', checkpoint, '--source', source, '--out', out, '--save-txt',
                      '--conf-thres', '0.999')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'readme.md' in proc.stdout and '1 skipped' in proc.stdout
    for name in ('blank', 'noise'):
        assert (out / f'{name}.txt').read_text().splitlines()[1] == '0'
    assert cv2.imread(str(out / 'blank.jpg')).shape == (120, 160, 3) and (out / 'noise.png').is_file()


@pytest.mark.parametrize('kind', ['truncated', 'empty', 'jpeg'])
def test_bad_weights_file_is_one_line_exit_2(kind, tmp_path, capsys):
    import detect
    from bad_input import assert_one_line_naming, bad_weights_files
    path, says = bad_weights_files(tmp_path)[kind]
    with pytest.raises(SystemExit) as stop:
        detect.main(detect.parse_args(['--weights', str(path), '--network', 'mobile0.25', '--source', str(tmp_path),
                                       '--device', 'cpu', '--out', str(tmp_path / 'out')]))
    assert_one_line_naming(stop.value.code, capsys.readouterr().err, '--weights', path.name, says)


def test_missing_paths_exit_2_with_one_line(weights, tmp_path, capsys):
    import detect  # in-process: the same main() the command line runs, without another interpreter start
    missing = tmp_path / 'nope.pth'
    for argv, flag, path in ((['--weights', missing, '--source', tmp_path], '--weights', missing),
                             (['--weights', weights, '--source', tmp_path / 'nothing'], '--source', 'nothing')):
        with pytest.raises(SystemExit) as exit_info:
            detect.main(detect.parse_args([str(a) for a in argv] + ['--device', 'cpu', '--out', str(tmp_path)]))
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.strip().count('\n') == 0 and flag in err and str(path) in err
