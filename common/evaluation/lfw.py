"""LFW face verification: pair lists, embeddings, and the standard 10-fold accuracy, for embeddings from any model.

    python -m common.evaluation.lfw --pairs lfw/pairs.txt --embeddings lfw_embeddings.npz --json lfw.json \\
        --roc lfw_roc.png
    python -m common.evaluation.lfw --bin data/faces_emore/lfw.bin --weights runs/recognition/best.pt --json lfw.json

The .npz maps every image path as the pair list names it (`Name/Name_0001.jpg` for the official list) to its
embedding (train_recognition.py --export-embeddings writes one; any model's vectors work). A path the list names but
the .npz lacks is an error naming it.

Pair lists, told apart by their content:
- the official pairs.txt: a header `S P`, then S sets of P positive lines `name i j` followed by P negative lines
  `name1 i name2 j`; picture i of a person is `name/name_{i:04d}.jpg`. The folds are the file's sets (LFW's 10);
  a header with one number P is one set, folded as the tutorial's list is.
- the recognition tutorial's list (lfw_test_pair.txt): lines `a.jpg b.jpg label`, label 1 for the same person. It
  holds the official pairs with all positives first; the folds are balanced: fold k takes the k-th tenth of the
  positives and the k-th tenth of the negatives, which gives back the official sets for that file.

insightface's verification sets (lfw.bin, cfp_fp.bin, agedb_30.bin, ...; common/data/verification_bin.py) hold the
pairs as images 2i and 2i + 1; `--bin` scores one with any recognition file common/inference/recognizer.py loads (our
checkpoints, the released MobileFaceNet), its 112 x 112 ArcFace crops fitted to the network's input
(common/data/face_crops.py). Their folds are taken as insightface takes them: in file order, fold k the k-th tenth of
the pairs.

The protocol: score = cosine similarity; for each fold, the threshold that maximises accuracy on the other nine folds
is chosen among the midpoints of their sorted distinct scores (the smallest on a tie), and the fold is scored with it
(a pair is "same" when its score is above the threshold). The headline is the mean and standard deviation (over the
10 folds, ddof 0) of those accuracies. The best-threshold accuracy over all pairs (the tutorial's number) picks its
threshold on the pairs it scores, so it is optimistic, and is labelled so.

`embed_images` computes the vectors for a model: each unique image once, in batches, the horizontally flipped
image's embedding added before L2-normalising (`flip=False` turns that off).
"""
import argparse
import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FOLDS = 10


class PairsFormatError(ValueError):
    """A pair list that is neither format: the message names file:line and what was expected there."""


class MissingEmbeddingError(KeyError):
    """Images the pair list names but the embeddings lack."""

    def __str__(self):
        return self.args[0]


@dataclass
class Pairs:
    """Pairs of image paths (as the list names them), whether each shows one person, and each pair's fold."""
    left: list
    right: list
    same: np.ndarray   # (N,) bool
    fold: np.ndarray   # (N,) int in [0, FOLDS)
    format: str        # 'official' or 'tutorial'
    path: str = ''

    def __len__(self):
        return len(self.same)

    def images(self) -> list:
        """Every image the pairs name, once, in order of first appearance."""
        return list(dict.fromkeys(p for pair in zip(self.left, self.right) for p in pair))


# ---------------------------------------------------------------------------------------------------- reading lists


def official_path(name: str, number: str) -> str:
    return f'{name}/{name}_{int(number):04d}.jpg'


def _is_int(token: str) -> bool:
    return token.lstrip('+-').isdigit()


def read_pairs(path) -> Pairs:
    """Read a pair list in either format (see the module docstring); PairsFormatError on anything else."""
    path = Path(path)
    lines = [(number, line.split()) for number, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    if not lines:
        raise PairsFormatError(f'{path}: empty pair list')
    header = lines[0][1]
    if len(header) in (1, 2) and all(_is_int(t) for t in header):
        return _read_official(path, lines)
    return _read_tutorial(path, lines)


def _read_official(path: Path, lines) -> Pairs:
    header = [int(t) for t in lines[0][1]]
    sets, per_set = (header[0], header[1]) if len(header) == 2 else (1, header[0])
    body = lines[1:]
    if sets < 1 or per_set < 1 or len(body) != 2 * sets * per_set:
        raise PairsFormatError(f'{path}:{lines[0][0]}: header says {sets} sets of {per_set} positive + {per_set} '
                               f'negative pairs ({2 * sets * per_set} lines), the file has {len(body)} pair lines')
    left, right, same, fold = [], [], [], []
    for index, (number, tokens) in enumerate(body):
        positive = index % (2 * per_set) < per_set
        if positive and not (len(tokens) == 3 and _is_int(tokens[1]) and _is_int(tokens[2])):
            raise PairsFormatError(f'{path}:{number}: expected a positive pair "name i j", got {" ".join(tokens)!r}')
        if not positive and not (len(tokens) == 4 and _is_int(tokens[1]) and _is_int(tokens[3])):
            raise PairsFormatError(f'{path}:{number}: expected a negative pair "name1 i name2 j", got '
                                   f'{" ".join(tokens)!r}')
        if positive:
            left.append(official_path(tokens[0], tokens[1]))
            right.append(official_path(tokens[0], tokens[2]))
        else:
            left.append(official_path(tokens[0], tokens[1]))
            right.append(official_path(tokens[2], tokens[3]))
        same.append(positive)
        fold.append(index // (2 * per_set))
    same = np.array(same)
    folds = np.array(fold) if sets > 1 else balanced_folds(same)
    if sets == 1:
        _check_enough(path, same)
    return Pairs(left, right, same, folds, 'official', str(path))


def _read_tutorial(path: Path, lines) -> Pairs:
    left, right, same = [], [], []
    for number, tokens in lines:
        if len(tokens) != 3 or tokens[2] not in ('0', '1'):
            raise PairsFormatError(f'{path}:{number}: expected "a.jpg b.jpg label" with label 0 or 1 (or an '
                                   f'official pairs.txt, which starts with a "sets pairs" header), got '
                                   f'{" ".join(tokens)!r}')
        left.append(tokens[0])
        right.append(tokens[1])
        same.append(tokens[2] == '1')
    same = np.array(same)
    _check_enough(path, same)
    return Pairs(left, right, same, balanced_folds(same), 'tutorial', str(path))


def _check_enough(path, same):
    if same.sum() < FOLDS or (~same).sum() < FOLDS:
        raise PairsFormatError(f'{path}: {int(same.sum())} same and {int((~same).sum())} different pairs; the '
                               f'{FOLDS}-fold protocol needs at least {FOLDS} of each')


def ordered_folds(count: int) -> np.ndarray:
    """Fold of each of `count` pairs in file order, as insightface folds a .bin (scikit-learn's KFold without
    shuffling): fold k is the k-th tenth, the first count % 10 folds one pair longer when 10 does not divide it."""
    if count < FOLDS:
        raise ValueError(f'{count} pairs; the {FOLDS}-fold protocol needs at least {FOLDS}')
    sizes = np.full(FOLDS, count // FOLDS)
    sizes[:count % FOLDS] += 1
    return np.repeat(np.arange(FOLDS), sizes)


def balanced_folds(same: np.ndarray) -> np.ndarray:
    """Fold of each pair when the file has no sets: the k-th tenth of the positives and of the negatives, in file
    order, make fold k."""
    fold = np.empty(len(same), int)
    for label in (True, False):
        where = np.flatnonzero(same == label)
        fold[where] = np.arange(len(where)) * FOLDS // len(where)
    return fold


# ---------------------------------------------------------------------------------------------------- the protocol


def cosine_scores(embeddings: dict, pairs: Pairs) -> np.ndarray:
    """(N,) float64 cosine similarity of each pair. MissingEmbeddingError names the images `embeddings` lacks."""
    missing = [p for p in pairs.images() if p not in embeddings]
    if missing:
        shown = ', '.join(missing[:3]) + (f' and {len(missing) - 3} more' if len(missing) > 3 else '')
        raise MissingEmbeddingError(f'{len(missing)} image(s) named by {pairs.path or "the pairs"} have no '
                                    f'embedding: {shown}')
    names = pairs.images()
    index = {name: i for i, name in enumerate(names)}
    vectors = np.stack([np.asarray(embeddings[name], np.float64).ravel() for name in names])
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    a = vectors[[index[p] for p in pairs.left]]
    b = vectors[[index[p] for p in pairs.right]]
    return np.einsum('ij,ij->i', a, b)


def adjacent_scores(vectors: np.ndarray) -> np.ndarray:
    """(N,) float64 cosine similarity of vectors 2i and 2i + 1 (a .bin's pairs)."""
    vectors = np.asarray(vectors, np.float64)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return np.einsum('ij,ij->i', vectors[0::2], vectors[1::2])


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy): among the midpoints of the sorted distinct scores, the one where "same = score >
    threshold" is right most often; the smallest such midpoint on a tie. All at once: for each candidate, the
    positives above it plus the negatives at or below it, by binary search in the sorted scores."""
    distinct = np.unique(scores)
    candidates = (distinct[:-1] + distinct[1:]) / 2 if len(distinct) > 1 else distinct
    positives, negatives = np.sort(scores[same]), np.sort(scores[~same])
    correct = (len(positives) - np.searchsorted(positives, candidates, side='right')
               + np.searchsorted(negatives, candidates, side='right'))
    best = int(np.argmax(correct))  # the first maximum: the smallest threshold
    return float(candidates[best]), float(correct[best] / len(scores))


def verification_report(scores: np.ndarray, same: np.ndarray, fold: np.ndarray) -> dict:
    """acc_10fold and std_10fold (the standard protocol; over however many folds `fold` names, LFW's 10),
    acc_best_threshold (optimistic) and its threshold, and the per-fold accuracies and thresholds."""
    accuracies, thresholds = [], []
    for k in np.unique(fold):
        test = fold == k
        threshold, _ = best_threshold(scores[~test], same[~test])
        accuracies.append(float(np.mean((scores[test] > threshold) == same[test])))
        thresholds.append(float(threshold))
    threshold, accuracy = best_threshold(scores, same)
    return {'acc_10fold': float(np.mean(accuracies)), 'std_10fold': float(np.std(accuracies)),
            'acc_best_threshold': accuracy, 'threshold': threshold, 'fold_accuracies': accuracies,
            'fold_thresholds': thresholds, 'pairs': int(len(scores))}


def evaluate_embeddings(pairs: Pairs, embeddings: dict) -> dict:
    return verification_report(cosine_scores(embeddings, pairs), pairs.same, pairs.fold)


def format_report(report: dict) -> str:
    return (f'10-fold accuracy {report["acc_10fold"]:.4f} +- {report["std_10fold"]:.4f} over {report["pairs"]} '
            f'pairs; best-threshold accuracy {report["acc_best_threshold"]:.4f} at {report["threshold"]:.4f} '
            f'(optimistic: threshold chosen on the pairs it scores)')


def roc_curve(scores: np.ndarray, same: np.ndarray):
    """(false positive rate, true positive rate, AUC) with "same" = score > t, for t from high to low."""
    order = np.argsort(-scores, kind='stable')
    s, y = scores[order], same[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # thresholds between distinct scores
    tpr = np.r_[0, np.cumsum(y)[last_of_tie] / max(y.sum(), 1)]
    fpr = np.r_[0, np.cumsum(~y)[last_of_tie] / max((~y).sum(), 1)]
    return fpr, tpr, float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # trapezoids


# ---------------------------------------------------------------------------------------------------- embedding


class ImageList:
    """A map-style dataset of root/path for each path, opened as RGB with PIL and transformed (the transform makes
    gray input gray)."""

    def __init__(self, root, paths, transform):
        self.root, self.paths, self.transform = Path(root), list(paths), transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        with Image.open(self.root / self.paths[index]) as image:
            return self.transform(image.convert('RGB')), index


class ArrayImages:
    """A map-style dataset of decoded RGB uint8 arrays (H, W, 3), each made a PIL image and transformed."""

    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.transform(Image.fromarray(self.images[index])), index


def unreadable_images(root, paths) -> list[str]:
    """'path (why)' for each of root/path that is missing or cannot be decoded."""
    from ..data.images import pil_image_problem
    root = Path(root)
    problems = []
    for path in paths:
        why = 'missing' if not (root / path).is_file() else pil_image_problem(root / path)
        if why:
            problems.append(f'{root / path} ({why})')
    return problems


def embed_images(model, root, paths, transform, device, **options) -> dict:
    """{path: unit-length float32 embedding} of root/path for each path (embed_dataset's options)."""
    return dict(zip(paths, embed_dataset(model, ImageList(root, paths, transform), device, **options)))


def embed_arrays(model, images, transform, device, **options) -> np.ndarray:
    """(N, D) unit-length float32 embeddings of decoded RGB uint8 images (embed_dataset's options)."""
    return embed_dataset(model, ArrayImages(images, transform), device, **options)


def embed_dataset(model, dataset, device, batch_size: int = 64, workers: int = 0, flip: bool = True, autocast=None,
                  memory_format=None) -> np.ndarray:
    """(N, D) unit-length float32 embeddings of the (image, index) items of `dataset`, in batches; the flipped
    image's embedding is added before normalising when `flip`. `autocast` (a context factory) and `memory_format`
    (the model's) are the training run's. The model is put in eval mode (and left so)."""
    import torch  # here: the command line above scores vectors without torch
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         pin_memory=torch.device(device).type == 'cuda')
    vectors = []
    with torch.no_grad():
        for images, _ in loader:
            images = images.to(device, non_blocking=True, memory_format=memory_format or torch.contiguous_format)
            with autocast() if autocast else contextlib.nullcontext():
                embedding = model(images).float()
                if flip:
                    embedding = embedding + model(torch.flip(images, dims=[3])).float()
            vectors.append(torch.nn.functional.normalize(embedding, dim=1).cpu())
    return torch.cat(vectors).numpy() if vectors else np.zeros((0, 0), np.float32)


def bin_scores(model, pairs, transform, device, **options) -> np.ndarray:
    """(N,) cosine scores of a model on a .bin's pairs (common/data/verification_bin.py VerificationPairs), its
    images embedded through `transform` (for ArcFace crops: common/data/face_crops.py face_transforms(input,
    arcface_crops=True)[1]) with embed_dataset's options. Score them with verification_report(scores, pairs.same,
    ordered_folds(len(scores)))."""
    return adjacent_scores(embed_arrays(model, pairs.images, transform, device, **options))


# ---------------------------------------------------------------------------------------------------- the command


def load_embeddings(path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _error(message: str) -> int:
    """One line on stderr and exit status 2, as runtime.fail (whose import would load torch for nothing)."""
    print(f'error: {message}', file=sys.stderr)
    return 2


def _pair_list_scores(args):
    """(scores, same, folds, what) of --pairs with --embeddings, or an exit status after one error line."""
    for flag, path, kind in (('--pairs', args.pairs, 'pair list'), ('--embeddings', args.embeddings, 'embeddings')):
        if not Path(path).is_file():
            return _error(f'{flag}: {kind} not found: {path}')
    try:
        pairs = read_pairs(args.pairs)
    except PairsFormatError as e:
        return _error(f'--pairs: {e}')
    try:
        embeddings = load_embeddings(args.embeddings)
    except (OSError, ValueError) as e:
        return _error(f'--embeddings: {args.embeddings}: not a readable .npz of vectors ({e})')
    try:
        scores = cosine_scores(embeddings, pairs)
    except MissingEmbeddingError as e:
        return _error(f'--embeddings {args.embeddings}: {e}')
    except ValueError as e:  # vectors of different lengths
        return _error(f'--embeddings {args.embeddings}: {e}')
    return scores, pairs.same, pairs.fold, f'{pairs.path} ({pairs.format} format)'


def _bin_scores(args):
    """(scores, same, folds, what) of --bin embedded by --weights, or an exit status after one error line."""
    for flag, path, kind in (('--bin', args.bin, 'verification .bin'), ('--weights', args.weights, 'model file')):
        if not path or not Path(path).is_file():
            return _error(f'{flag}: {kind} not found: {path}' if path else f'{flag} is needed with --bin/--weights')
    import torch
    from ..checkpoint import CheckpointError
    from ..data.face_crops import face_transforms
    from ..data.verification_bin import VerificationBinError, read_verification_bin
    from ..inference.recognizer import load_recognition_model
    from ..runtime import select_device
    try:
        pairs = read_verification_bin(args.bin)
        folds = ordered_folds(len(pairs))
    except (VerificationBinError, ValueError) as e:
        return _error(f'--bin: {e}')
    device = select_device(args.device)
    try:
        model, arch = load_recognition_model(args.weights, device)
    except CheckpointError as e:
        return _error(f'--weights: {str(e).splitlines()[0]}')
    if not isinstance(model, torch.nn.Module):
        return _error(f'--weights {args.weights}: an .onnx file; --bin scores PyTorch files (the checkpoint it came '
                      f'from)')
    scores = bin_scores(model, pairs, face_transforms(arch['input'], arcface_crops=True)[1], device,
                        batch_size=args.batch_size, flip=args.flip)
    return scores, pairs.same, folds, f'{pairs.path} ({len(pairs)} pairs, {FOLDS} folds in file order)'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m common.evaluation.lfw', description=__doc__.split('\n')[0])
    parser.add_argument('--pairs', help='pairs.txt (official) or lfw_test_pair.txt (tutorial), with --embeddings')
    parser.add_argument('--embeddings', help='.npz: image path as the pairs name it -> vector')
    parser.add_argument('--bin', help='an insightface verification .bin (lfw.bin, cfp_fp.bin, ...), with --weights')
    parser.add_argument('--weights', help='a recognition checkpoint of ours (train_recognition.py, '
                        'common.models.convert) or the released MobileFaceNet file, to embed the --bin images with')
    parser.add_argument('--device', default='auto', help='--bin: auto, cpu, cuda, cuda:N or mps')
    parser.add_argument('--batch-size', type=int, default=60, help='--bin: images per forward pass')
    parser.add_argument('--flip', action=argparse.BooleanOptionalAction, default=True,
                        help='--bin: add the mirror image\'s embedding before normalising')
    parser.add_argument('--json', default=None, help='write the report here')
    parser.add_argument('--roc', default=None, help='write the ROC curve here (PNG)')
    args = parser.parse_args(argv)
    if (args.bin or args.weights) and (args.pairs or args.embeddings):
        return _error('--pairs/--embeddings score a pair list, --bin/--weights a .bin: give one of the two')
    if not (args.bin or args.weights or (args.pairs and args.embeddings)):
        return _error('give --pairs LIST --embeddings NPZ, or --bin FILE --weights CHECKPOINT')
    scored = _bin_scores(args) if args.bin or args.weights else _pair_list_scores(args)
    if isinstance(scored, int):
        return scored
    scores, same, fold, what = scored
    report = verification_report(scores, same, fold)
    print(f'{what}: {format_report(report)}')
    print(json.dumps({k: report[k] for k in ('acc_10fold', 'std_10fold', 'acc_best_threshold', 'threshold')}))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + '\n')
    if args.roc:
        from ..visualize import plot_roc
        fpr, tpr, auc = roc_curve(scores, same)
        plot_roc(fpr, tpr, args.roc, label=f'AUC {auc:.4f}, 10-fold acc {report["acc_10fold"]:.4f}',
                 title=f'ROC: {Path(args.pairs or args.bin).name}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
