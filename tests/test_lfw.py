"""LFW verification (common/evaluation/lfw.py): both pair formats told apart by content, the 10-fold protocol on
scores with a known answer and against a plain re-implementation (to 1e-9) on the official layout, the command."""
import json
import subprocess
import sys
import zlib

import numpy as np
import pytest

from common.evaluation.lfw import (FOLDS, MissingEmbeddingError, PairsFormatError, balanced_folds, best_threshold,
                                   cosine_scores, evaluate_embeddings, read_pairs, roc_curve, verification_report)
from common.evaluation.lfw import main as lfw_main


def write_official(path, sets, per_set, people=30, images=5, seed=0):
    """An official-format pairs.txt over made-up people: `sets per_set`, then per set positives then negatives."""
    rng = np.random.default_rng(seed)
    lines = [f'{sets}\t{per_set}']
    for _ in range(sets):
        for _ in range(per_set):
            i, j = sorted(rng.choice(np.arange(1, images + 1), 2, replace=False))
            lines.append(f'Person_{rng.integers(people):02d}\t{i}\t{j}')
        for _ in range(per_set):
            a, b = rng.choice(people, 2, replace=False)
            i, j = rng.integers(1, images + 1, 2)
            lines.append(f'Person_{a:02d}\t{i}\tPerson_{b:02d}\t{j}')
    path.write_text('\n'.join(lines) + '\n')
    return path


def identity_embeddings(paths, dim=16, noise=1.2, seed=0):
    """Vectors that carry identity: each person's fixed centre (from the name) plus per-image noise, so verification
    is neither trivial nor chance."""
    rng = np.random.default_rng(seed)
    vectors = {}
    for path in paths:
        person = path.split('/')[0]
        centre = np.random.default_rng(zlib.crc32(person.encode())).normal(size=dim)
        vectors[path] = centre + noise * rng.normal(size=dim)
    return vectors


# ------------------------------------------------------------------------------------ an independent implementation


def plain_official_protocol(pairs_file, embeddings):
    """The standard protocol written the obvious way, sharing nothing with the module: parse line by line, fold =
    set, cosine per pair, and for each fold try every midpoint of the other folds' sorted distinct scores."""
    lines = [line.split() for line in open(pairs_file) if line.strip()]
    sets, per_set = int(lines[0][0]), int(lines[0][1])
    scores, labels, folds = [], [], []
    for index, t in enumerate(lines[1:]):
        if len(t) == 3:
            a, b, label = f'{t[0]}/{t[0]}_{int(t[1]):04d}.jpg', f'{t[0]}/{t[0]}_{int(t[2]):04d}.jpg', 1
        else:
            a, b, label = f'{t[0]}/{t[0]}_{int(t[1]):04d}.jpg', f'{t[2]}/{t[2]}_{int(t[3]):04d}.jpg', 0
        u, v = np.asarray(embeddings[a], float), np.asarray(embeddings[b], float)
        scores.append(float(np.dot(u / np.linalg.norm(u), v / np.linalg.norm(v))))
        labels.append(label)
        folds.append(index // (2 * per_set))
    scores, labels, folds = np.array(scores), np.array(labels), np.array(folds)
    accuracies = []
    for k in range(sets):
        train_scores, train_labels = scores[folds != k], labels[folds != k]
        distinct = sorted(set(train_scores.tolist()))
        best_acc, best_t = -1.0, None
        for low, high in zip(distinct[:-1], distinct[1:]):
            t = (low + high) / 2
            acc = np.mean((train_scores > t).astype(int) == train_labels)
            if acc > best_acc:  # strictly better only: the smallest threshold wins a tie
                best_acc, best_t = acc, t
        test = folds == k
        accuracies.append(np.mean((scores[test] > best_t).astype(int) == labels[test]))
    return float(np.mean(accuracies)), float(np.std(accuracies))


# ------------------------------------------------------------------------------------------------------ formats


def test_official_format_paths_labels_and_folds(tmp_path):
    path = write_official(tmp_path / 'pairs.txt', sets=10, per_set=3)
    pairs = read_pairs(path)
    assert pairs.format == 'official' and len(pairs) == 60
    lines = path.read_text().splitlines()
    name, i, j = lines[1].split('\t')
    assert (pairs.left[0], pairs.right[0]) == (f'{name}/{name}_{int(i):04d}.jpg', f'{name}/{name}_{int(j):04d}.jpg')
    a, i, b, j = lines[4].split('\t')  # the first negative of set 1
    assert (pairs.left[3], pairs.right[3]) == (f'{a}/{a}_{int(i):04d}.jpg', f'{b}/{b}_{int(j):04d}.jpg')
    assert pairs.same.tolist() == ([True] * 3 + [False] * 3) * 10
    assert pairs.fold.tolist() == [k for k in range(10) for _ in range(6)]
    assert len(pairs.images()) == len(set(pairs.left + pairs.right))


def test_tutorial_format_with_balanced_folds(tmp_path):
    official = read_pairs(write_official(tmp_path / 'pairs.txt', sets=10, per_set=4))
    order = np.r_[np.flatnonzero(official.same), np.flatnonzero(~official.same)]  # all positives, then negatives
    lines = [f'{official.left[i]} {official.right[i]} {int(official.same[i])}' for i in order]
    (tmp_path / 'list.txt').write_text('\n'.join(lines) + '\n')
    tutorial = read_pairs(tmp_path / 'list.txt')
    assert tutorial.format == 'tutorial' and len(tutorial) == 80
    assert tutorial.same.tolist() == [True] * 40 + [False] * 40
    assert tutorial.fold.tolist() == [k for k in range(10) for _ in range(4)] * 2
    # each fold holds what the official set held: the same pairs, hence the same 10-fold result
    assert tutorial.fold.tolist() == official.fold[order].tolist()
    vectors = identity_embeddings(official.images())
    assert evaluate_embeddings(tutorial, vectors) == evaluate_embeddings(official, vectors)


def test_format_is_told_by_content_not_name(tmp_path):
    (tmp_path / 'pairs.txt').write_text(''.join(f'a/{i}.jpg b/{i}.jpg {i % 2}\n' for i in range(40)))
    assert read_pairs(tmp_path / 'pairs.txt').format == 'tutorial'
    write_official(tmp_path / 'test_pair.txt', sets=10, per_set=2)
    assert read_pairs(tmp_path / 'test_pair.txt').format == 'official'


def test_balanced_folds_of_unsorted_labels():
    same = np.array([True, False] * 25 + [True] * 10)
    fold = balanced_folds(same)
    for k in range(FOLDS):  # 35 positives and 25 negatives: 3 or 4, and 2 or 3, per fold
        assert (same[fold == k]).sum() in (3, 4) and (~same[fold == k]).sum() in (2, 3)
    assert np.all(np.diff(fold[same]) >= 0) and np.all(np.diff(fold[~same]) >= 0)  # in file order


@pytest.mark.parametrize('content, says', [
    ('10\t2\nA\t1\t2\n', 'header says 10 sets of 2'),
    ('1\t2\nA\t1\t2\nA\t1\tB\t2\nA\t1\tB\t2\nA\t1\tB\t2\n', 'pairs.txt:3: expected a positive pair'),
    ('1\t1\nA\t1\t2\nA\tx\tB\t2\n', 'pairs.txt:3: expected a negative pair'),
    ('a.jpg b.jpg 1\na.jpg b.jpg maybe\n', 'pairs.txt:2: expected "a.jpg b.jpg label"'),
    ('a.jpg b.jpg 1\nb.jpg c.jpg 0\n', 'needs at least 10 of each'),
])
def test_malformed_lists_name_file_and_line(tmp_path, content, says):
    (tmp_path / 'pairs.txt').write_text(content)
    with pytest.raises(PairsFormatError, match='pairs.txt') as error:
        read_pairs(tmp_path / 'pairs.txt')
    assert says in str(error.value)


# ---------------------------------------------------------------------------------------------------- the protocol


def test_best_threshold_is_a_midpoint_and_the_smallest_on_a_tie():
    scores = np.array([0.6, 0.9, 0.1, 0.7])
    same = np.array([True, True, False, False])
    # midpoints 0.35 (3 right), 0.65 (2 right), 0.8 (3 right): the smaller of the tied two
    assert best_threshold(scores, same) == (pytest.approx(0.35), 0.75)


def test_ten_fold_on_constructed_scores():
    """Positives at 0.9 and negatives at 0.1 in every fold, except one negative of fold 0 at 0.95. Folds 1-9 pick
    0.5 (it loses the outlier; the other midpoint, 0.925, loses every positive) and score 1.0; fold 0 picks 0.5
    from the clean folds and loses its outlier: 3/4."""
    scores = np.tile([0.9, 0.9, 0.1, 0.1], FOLDS)
    same = np.tile([True, True, False, False], FOLDS)
    fold = np.repeat(np.arange(FOLDS), 4)
    scores[3] = 0.95
    report = verification_report(scores, same, fold)
    assert report['fold_accuracies'] == [0.75] + [1.0] * 9
    assert report['fold_thresholds'] == pytest.approx([0.5] * 10)
    assert report['acc_10fold'] == pytest.approx(0.975) and report['std_10fold'] == pytest.approx(0.075)
    assert report['acc_best_threshold'] == pytest.approx(39 / 40) and report['threshold'] == pytest.approx(0.5)


def test_same_means_strictly_above_the_threshold():
    """Folds 1-9 put the only midpoint at 0.3; fold 0's positive scores exactly 0.3, so it counts as different."""
    scores = np.tile([0.4, 0.2], FOLDS)
    same = np.tile([True, False], FOLDS)
    fold = np.repeat(np.arange(FOLDS), 2)
    scores[0] = 0.3
    report = verification_report(scores, same, fold)
    assert report['fold_thresholds'][0] == pytest.approx(0.3)
    assert report['fold_accuracies'][0] == 0.5 and report['fold_accuracies'][1:] == [1.0] * 9


def test_agrees_with_a_plain_implementation_on_the_official_layout(tmp_path):
    path = write_official(tmp_path / 'pairs.txt', sets=10, per_set=40, people=60, images=6)
    pairs = read_pairs(path)
    vectors = identity_embeddings(pairs.images())
    report = evaluate_embeddings(pairs, vectors)
    expected_mean, expected_std = plain_official_protocol(path, vectors)
    assert 0.6 < report['acc_10fold'] < 0.99  # informative, not trivial
    assert abs(report['acc_10fold'] - expected_mean) < 1e-9 and abs(report['std_10fold'] - expected_std) < 1e-9


def test_agrees_with_a_plain_implementation_on_the_real_pairs_txt(shared_data):
    """The real LFW pairs.txt (10 sets of 300 + 300) with made-up embeddings; the tutorial's lfw_test_pair.txt holds
    the same pairs and its balanced folds give the same result."""
    path = shared_data / 'lfw' / 'pairs.txt'
    pairs = read_pairs(path)
    assert pairs.format == 'official' and len(pairs) == 6000 and pairs.same.sum() == 3000
    vectors = identity_embeddings(pairs.images(), dim=32, noise=1.5)
    report = evaluate_embeddings(pairs, vectors)
    expected_mean, expected_std = plain_official_protocol(path, vectors)
    assert abs(report['acc_10fold'] - expected_mean) < 1e-9 and abs(report['std_10fold'] - expected_std) < 1e-9
    tutorial = read_pairs(shared_data / 'lfw' / 'lfw_test_pair.txt')
    assert tutorial.format == 'tutorial' and len(tutorial) == 6000
    assert abs(evaluate_embeddings(tutorial, vectors)['acc_10fold'] - report['acc_10fold']) < 1e-12


def test_missing_embedding_is_named(tmp_path):
    pairs = read_pairs(write_official(tmp_path / 'pairs.txt', sets=10, per_set=2))
    vectors = identity_embeddings(pairs.images())
    del vectors[pairs.right[5]]
    with pytest.raises(MissingEmbeddingError, match=pairs.right[5]):
        cosine_scores(vectors, pairs)


def test_roc_curve_ends_and_area():
    fpr, tpr, auc = roc_curve(np.array([0.9, 0.8, 0.7, 0.1]), np.array([True, True, False, False]))
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1) and auc == 1.0
    _, _, auc = roc_curve(np.array([0.5, 0.5, 0.5, 0.5]), np.array([True, False, True, False]))
    assert auc == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------------ the command


def run_cli(*args):
    return subprocess.run([sys.executable, '-m', 'common.evaluation.lfw', *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def test_command_line_report_json_and_roc(tmp_path):
    path = write_official(tmp_path / 'pairs.txt', sets=10, per_set=10)
    pairs = read_pairs(path)
    vectors = identity_embeddings(pairs.images())
    np.savez(tmp_path / 'e.npz', **vectors)
    done = run_cli('--pairs', path, '--embeddings', tmp_path / 'e.npz', '--json', tmp_path / 'r.json',
                   '--roc', tmp_path / 'roc.png')
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / 'r.json').read_text())
    assert report['acc_10fold'] == pytest.approx(evaluate_embeddings(pairs, vectors)['acc_10fold'], abs=1e-12)
    assert {'acc_10fold', 'std_10fold', 'acc_best_threshold', 'threshold'} <= set(report)
    assert 'optimistic' in done.stdout and (tmp_path / 'roc.png').stat().st_size > 1000


def test_command_line_names_a_missing_image_and_a_missing_file(tmp_path, capsys):
    path = write_official(tmp_path / 'pairs.txt', sets=10, per_set=10)
    pairs = read_pairs(path)
    missing = pairs.left[7]
    np.savez(tmp_path / 'partial.npz', **{k: v for k, v in identity_embeddings(pairs.images()).items() if k != missing})
    assert lfw_main(['--pairs', str(path), '--embeddings', str(tmp_path / 'partial.npz')]) == 2
    error = capsys.readouterr().err
    assert error.count('\n') == 1 and error.startswith('error: --embeddings') and missing in error
    assert lfw_main(['--pairs', str(tmp_path / 'nowhere.txt'), '--embeddings', str(tmp_path / 'partial.npz')]) == 2
    error = capsys.readouterr().err
    assert error.count('\n') == 1 and '--pairs' in error and 'nowhere.txt' in error
