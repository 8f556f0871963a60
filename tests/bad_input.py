"""Bad weights files and the one-line answer every script must give them (shared by the script tests)."""
import importlib
import os

import cv2
import numpy as np
import torch


def bad_weights_files(folder):
    """A truncated checkpoint (the first 5 kB of one in Pytorch_Retinaface's .pth layout), an empty file and a JPEG,
    with what the message must say of each."""
    folder.mkdir(exist_ok=True)
    from common.models.retinaface import RetinaFace
    whole = folder / 'whole.pth'
    torch.save(RetinaFace('mobile0.25').state_dict(), whole, _use_new_zipfile_serialization=False)
    (folder / 'truncated.pth').write_bytes(whole.read_bytes()[:5000])
    (folder / 'empty.pth').write_bytes(b'')
    (folder / 'photo.pth').write_bytes(cv2.imencode('.jpg', np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    return {'truncated': (folder / 'truncated.pth', 'truncated or damaged'), 'empty': (folder / 'empty.pth', 'empty'),
            'jpeg': (folder / 'photo.pth', 'not a PyTorch checkpoint (a JPEG image)')}


def assert_one_line_naming(status, stderr, flag, name, says):
    """Exit 2 and one line `error: <flag>: <file> ...` saying what the file is not; never the weights_only security
    message, which is only for real checkpoints holding pickled objects."""
    message = stderr.strip()
    assert status == 2, stderr[-2000:]
    assert message.count('\n') == 0 and 'Traceback' not in message, message
    assert message.startswith(f'error: {flag}: ') and name in message and says in message, message
    assert 'weights_only' not in message, message


def run_main(script: str, argv, capsys):
    """`script`.main in this process (the code the command line runs, without another interpreter start): its exit
    status (0 when main returns) and what it printed on stdout and stderr."""
    module = importlib.import_module(script)
    try:
        module.main(module.parse_args([str(a) for a in argv]))
        status = 0
    except SystemExit as stop:
        status = stop.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def main_exit(script: str, argv, capsys):
    """`script`.main in this process: its exit status and what it printed on stderr."""
    status, _, err = run_main(script, argv, capsys)
    return status, err


def check_weights_flags(script: str, path, says: str, tmp_path, capsys, *, train_flags, eval_flags):
    """`path` given to the script's --pretrained, to --evaluate --weights and as OUT/last.pt to --resume: each is
    one line naming the file and what it is not, exit 2."""
    status, err = main_exit(script, ['--out', tmp_path / 'a', '--pretrained', path, *train_flags], capsys)
    assert_one_line_naming(status, err, '--pretrained', path.name, says)
    status, err = main_exit(script, ['--out', tmp_path / 'b', '--evaluate', '--weights', path, *eval_flags], capsys)
    assert_one_line_naming(status, err, '--weights', path.name, says)
    (tmp_path / 'c').mkdir()
    os.link(path, tmp_path / 'c' / 'last.pt')
    status, err = main_exit(script, ['--out', tmp_path / 'c', '--resume', *train_flags], capsys)
    assert_one_line_naming(status, err, '--resume', 'last.pt', says)
