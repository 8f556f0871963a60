"""Every command the README, the docs and BENCHMARKS.md show names a script or module that exists and flags it
takes; the Quick start runs as written (smaller, in a tmp dir)."""
import contextlib
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
import warnings

import pytest

FLAG = re.compile(r'(?<![\w-])(--[a-zA-Z0-9][\w-]*)')


def bash_blocks(path) -> list[str]:
    return re.findall(r'```bash\n(.*?)```', path.read_text(), flags=re.S)


def commands(block: str) -> list[list[str]]:
    """The commands of a bash block as token lists: comments dropped, continued lines joined, && ; | split."""
    text = re.sub(r'\\\n', ' ', block)
    found = []
    for line in text.splitlines():
        line = re.sub(r'(^|\s)#.*$', '', line)
        for part in re.split(r'&&|;|\|', line):
            try:
                tokens = shlex.split(part)
            except ValueError:
                continue
            if tokens:
                found.append(tokens)
    return found


def python_program(tokens):
    """(kind, name, rest) for `python X.py ...`, `python -m M ...` and `torchrun [opts] X.py ...`; else None."""
    if tokens[0] in ('python', 'python3') and len(tokens) > 1:
        if tokens[1] == '-m' and len(tokens) > 2:
            return 'module', tokens[2], tokens[3:]
        if tokens[1].endswith('.py'):
            return 'script', tokens[1], tokens[2:]
    if tokens[0] == 'torchrun':
        script = next((i for i, t in enumerate(tokens) if t.endswith('.py')), None)
        if script is not None:
            return 'script', tokens[script], tokens[script + 1:]
    return None


def documented_commands(repo_root):
    pages = [repo_root / 'README.md', repo_root / 'BENCHMARKS.md', *sorted((repo_root / 'docs').glob('*.md'))]
    for page in pages:
        for block in bash_blocks(page):
            for tokens in commands(block):
                program = python_program(tokens)
                if program and (program[0] == 'script' or program[1].startswith('common')):  # ours, not pip's
                    yield page.name, ' '.join(tokens), program


def help_text(repo_root, kind, name, sub=None) -> str:
    """What `--help` prints, run in this process (runpy, as `python X.py` / `python -m M` would): fast, since torch
    is imported once."""
    argv = [name] + ([sub] if sub else []) + ['--help']
    out = io.StringIO()
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit), warnings.catch_warnings():
            warnings.simplefilter('ignore', RuntimeWarning)  # runpy: the module was imported before, by the test
            if kind == 'module':
                runpy.run_module(name, run_name='__main__', alter_sys=True)
            else:
                runpy.run_path(str(repo_root / name), run_name='__main__')
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
    return out.getvalue()


def test_every_documented_command_exists_with_its_flags(repo_root):
    cache, problems, checked = {}, [], 0
    for page, command, (kind, name, rest) in documented_commands(repo_root):
        if kind == 'script' and not (repo_root / name).is_file():
            if name.startswith(('finetune_retinaface_accumulate', '/')):  # the Hack-it copy; absolute paths
                continue
            problems.append(f'{page}: {name} does not exist: {command}')
            continue
        if kind == 'module' and not (repo_root / (name.replace('.', '/') + '.py')).is_file() \
                and not (repo_root / name.replace('.', '/') / '__main__.py').is_file():
            problems.append(f'{page}: module {name} does not exist: {command}')
            continue
        if (kind, name) not in cache:
            cache[kind, name] = help_text(repo_root, kind, name)
        text = cache[kind, name]
        sub = rest[0] if rest and not rest[0].startswith('-') and re.search(r'\{[\w,-]+\}', text) else None
        if sub:
            if (kind, name, sub) not in cache:
                cache[kind, name, sub] = help_text(repo_root, kind, name, sub)
            text = cache[kind, name, sub]
        known = set(FLAG.findall(text))
        for flag in (t.split('=')[0] for t in rest if t.startswith('--')):
            if flag not in known:
                problems.append(f'{page}: {name}{" " + sub if sub else ""} has no {flag}: {command}')
        checked += 1
    assert checked > 40, checked  # the pages do show commands
    assert not problems, '\n'.join(problems)


@pytest.mark.slow
def test_quick_start_runs(repo_root, tmp_path):
    """The Quick start's commands after the install, in order, in a fresh folder: smaller (16 images, 96 px, one
    epoch) so that it takes seconds, otherwise as written."""
    section = (repo_root / 'README.md').read_text().split('\n## Quick start\n', 1)[1].split('\n## ', 1)[0]
    lines = [' '.join(tokens) for block in bash_blocks_of(section) for tokens in commands(block)]
    runnable = [line for line in lines if line.startswith('python ') and 'pytest' not in line]
    assert [line.split()[1] for line in runnable] == ['-m', 'finetune_retinaface.py', 'detect.py'], runnable
    smaller = {'--num-images': '16', '--image-size': '96', '--epochs': '1'}
    env = {**os.environ, 'PYTHONPATH': str(repo_root), 'OMP_NUM_THREADS': '1'}
    for line in runnable:
        tokens = shlex.split(line)
        tokens = [smaller.get(tokens[i - 1], t) if i else t for i, t in enumerate(tokens)]
        tokens[0] = sys.executable
        if tokens[1].endswith('.py'):
            tokens[1] = str(repo_root / tokens[1])
        done = subprocess.run(tokens, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f'{line}\n{done.stderr[-3000:]}'
    assert (tmp_path / 'runs' / 'retinaface' / 'results.json').is_file()
    assert list((tmp_path / 'runs' / 'detect').glob('*.jpg'))


def bash_blocks_of(text: str) -> list[str]:
    return re.findall(r'```bash\n(.*?)```', text, flags=re.S)
