"""Shared fixtures. Real data lives in ../shared/data beside the checkout; tests that need it skip without it."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get('FACEKIT_SHARED_DATA', REPO.parent / 'shared' / 'data'))

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# pytest.ini runs the tests in two worker processes (pytest-xdist). Each of them, and every script a test starts,
# then uses one thread: two OpenMP pools of two threads each on two cores spin against each other and run slower
# than one.
if os.environ.get('PYTEST_XDIST_WORKER'):
    os.environ['OMP_NUM_THREADS'] = os.environ['MKL_NUM_THREADS'] = '1'
    import torch
    torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: a learning test (trains to a floor) or a whole-script run of several '
                            'seconds (resume, torchrun, export, real data); deselect with -m "not slow"')


@pytest.hookimpl(trylast=True)  # after -m / -k have deselected
def pytest_collection_modifyitems(items):
    """Under xdist each worker starts with its share of the learning tests (test_learns_*, a minute or two each).
    pytest.ini's worksteal hands worker k the k-th contiguous slice of the test list first, and a worker that runs
    dry takes tests from the end of another's slice; so the learning tests go to the front of the slices, dealt in
    turn. In the plain order most of them fell in one slice, and one worker ran them one after another."""
    workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
    learning = [item for item in items if item.name.startswith('test_learns_')]
    if workers < 2 or not learning:
        return
    rest = [item for item in items if not item.name.startswith('test_learns_')]
    ordered, taken = [], 0
    for worker in range(workers):
        share = learning[worker::workers]
        size = (len(items) - len(ordered)) // (workers - worker)  # the slice worksteal sends this worker first
        more = max(0, size - len(share))
        ordered += share + rest[taken:taken + more]
        taken += more
    items[:] = ordered + rest[taken:]


@pytest.fixture
def shared_data():
    """Path to ../shared/data; the test is skipped when it is absent (a user's fresh clone has none)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f'real test data not found at {SHARED_DATA}')
    return SHARED_DATA


@pytest.fixture
def repo_root():
    return REPO
