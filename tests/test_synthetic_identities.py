"""Synthetic identities (common/synthetic/identities.py): reproducible bytes, the ImageFolder and pair-list layout,
people who differ from each other more than their pictures do, and colour alone not telling them apart."""
import subprocess
import sys

import cv2
import numpy as np
import pytest

from common.evaluation.lfw import evaluate_embeddings, read_pairs
from common.synthetic import KINDS
from common.synthetic.identities import colour_histogram_embeddings, make_identities, render_face_crop, \
    sample_identity

SMALL = {'identities': 3, 'images_per_identity': 2, 'test_identities': 20, 'test_images_per_identity': 3,
         'pairs_per_set': 2}


def files_of(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def small_set(tmp_path_factory):
    return make_identities(tmp_path_factory.mktemp('identities') / 'small', seed=4, **SMALL)


def test_same_seed_same_bytes_and_the_command_line(small_set, tmp_path):
    assert KINDS['identities'] is make_identities
    again = make_identities(tmp_path / 'again', seed=4, **SMALL)
    assert files_of(small_set) == files_of(again)
    other = make_identities(tmp_path / 'other', seed=5, **SMALL)
    assert files_of(other).keys() == files_of(small_set).keys() and files_of(other) != files_of(small_set)
    flags = [f'--{k.replace("_", "-")}={v}' for k, v in SMALL.items()]
    done = subprocess.run([sys.executable, '-m', 'common.synthetic', 'identities', '--out', str(tmp_path / 'cli'),
                           '--seed', '4', *flags], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert files_of(tmp_path / 'cli') == files_of(small_set)


def test_colour_baseline_and_contact_sheet_commands(small_set, tmp_path):
    def synthetic(*argv):
        return subprocess.run([sys.executable, '-m', 'common.synthetic', *map(str, argv)], capture_output=True,
                              text=True, timeout=120)
    done = synthetic('colour-baseline', '--data', small_set)
    assert done.returncode == 0 and done.stdout.count('10-fold accuracy') == 2, done.stderr
    done = synthetic('contact-sheet', '--data', small_set, '--out', tmp_path / 'sheet.png')
    assert done.returncode == 0, done.stderr
    assert cv2.imread(str(tmp_path / 'sheet.png')).shape == (3 * 128, 2 * 128, 3)  # 3 people, 2 pictures each
    done = synthetic('colour-baseline', '--data', tmp_path)
    assert done.returncode == 2 and done.stderr.startswith('error: --data') and 'Traceback' not in done.stderr


def test_layout_and_pair_lists(small_set):
    train = sorted(p.name for p in (small_set / 'train').iterdir())
    test = sorted(p.name for p in (small_set / 'test').iterdir())
    assert len(train) == 3 and len(test) == 20 and not set(train) & set(test)
    assert sorted(p.name for p in (small_set / 'train' / train[0]).iterdir()) == [f'{train[0]}_0001.jpg',
                                                                                 f'{train[0]}_0002.jpg']
    image = cv2.imread(str(small_set / 'test' / test[0] / f'{test[0]}_0001.jpg'))
    assert image.shape == (128, 128, 3)

    official = read_pairs(small_set / 'pairs.txt')
    assert official.format == 'official' and len(official) == 10 * 2 * 2
    assert (small_set / 'pairs.txt').read_text().splitlines()[0] == '10\t2'
    assert all((small_set / 'test' / p).is_file() for p in official.images())
    people = [set() for _ in range(10)]
    for left, right, k in zip(official.left, official.right, official.fold):
        people[k] |= {left.split('/')[0], right.split('/')[0]}
    assert sum(map(len, people)) == len(set().union(*people))  # the sets hold disjoint people, as LFW's
    for left, right, same in zip(official.left, official.right, official.same):
        assert (left.split('/')[0] == right.split('/')[0]) == same and left != right

    tutorial = read_pairs(small_set / 'test_pair.txt')
    assert tutorial.format == 'tutorial'
    order = np.r_[np.flatnonzero(official.same), np.flatnonzero(~official.same)]  # positives first, as LFW's list
    assert tutorial.left == [official.left[i] for i in order] and tutorial.right == [official.right[i] for i in order]
    assert tutorial.fold.tolist() == official.fold[order].tolist()


def test_people_differ_more_than_their_pictures():
    """Mean absolute gray difference of aligned crops (the face region): two pictures of one person are closer than
    pictures of two people in most cases, yet no two pictures are the same."""
    def face(person, picture):
        crop = render_face_crop(sample_identity(np.random.default_rng([9, person])), np.random.default_rng([9, person,
                                                                                                          picture]))
        return cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)[40:110, 38:90].astype(np.float32)

    faces = [[face(person, picture) for picture in range(2)] for person in range(8)]
    same = [np.abs(a - b).mean() for a, b in faces]
    different = [np.abs(faces[i][0] - faces[j][1]).mean() for i in range(8) for j in range(8) if i != j]
    assert min(same) > 1.0  # pose, light and expression change every picture
    assert np.median(same) < np.median(different)


def test_colour_alone_does_not_tell_people_apart(tmp_path):
    """Colour histograms of the face region score near chance on the 10-fold protocol: the palettes are shared and
    every picture has its own light and colour cast. (On the default set: see the README.)"""
    data = make_identities(tmp_path / 'colour', seed=0, identities=1, images_per_identity=1, test_identities=40,
                           test_images_per_identity=4, pairs_per_set=12)
    pairs = read_pairs(data / 'pairs.txt')
    for face_only in (True, False):
        report = evaluate_embeddings(pairs, colour_histogram_embeddings(data / 'test', face_only=face_only))
        assert report['acc_10fold'] < 0.7, (face_only, report)
