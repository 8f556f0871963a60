"""Device choice, bad-flag messages and precision selection."""
import pytest
import torch

from common.runtime import Runtime, amp_dtype_for, require_path, select_device


def test_select_device_cpu_and_auto():
    assert select_device('cpu').type == 'cpu'
    assert select_device('auto').type in ('cpu', 'cuda', 'mps')


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message on a machine without CUDA')
def test_cuda_without_gpu_exits_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        select_device('cuda:0')
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert '--device' in err and len(err.strip().splitlines()) == 1


def test_unknown_device_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        select_device('tpu7')
    assert e.value.code == 2 and '--device' in capsys.readouterr().err


def test_require_path_names_flag_and_path(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        require_path(tmp_path / 'missing', '--data-root')
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert '--data-root' in err and 'missing' in err


def test_amp_is_full_precision_on_cpu_and_scaler_is_a_no_op():
    assert amp_dtype_for(torch.device('cpu'), True) is None
    rt = Runtime(device=torch.device('cpu'))
    assert not rt.grad_scaler().is_enabled()
    with rt.autocast():
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.parametrize('script', ['finetune_retinaface', 'train_centernet'])
def test_bad_device_flag_is_one_line_exit_2(tmp_path, script, capsys):
    from bad_input import main_exit  # the script's main() in this process: the code the command line runs
    data = tmp_path / 'data'
    data.mkdir()
    status, err = main_exit(script, ['--data-root', data, '--out', tmp_path / 'run', '--device', 'nonsense'], capsys)
    assert status == 2
    assert 'Traceback' not in err and '--device' in err
    assert err.strip().count('\n') == 0
