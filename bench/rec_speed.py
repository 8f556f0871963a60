"""Reading a face recognition training set from one .rec file against the same images as an ImageFolder, through the
training loader (decode + train_recognition.py's --input rgb112 train transforms, its default --workers), and the
datasets' start-up time on a large set, measured in the same run.

    python bench/rec_speed.py                                  # 4000 images read; start-up on 100,000
    python bench/rec_speed.py --images 512 --startup-images 2000 --rounds 1    # a quick check

The images: 112 x 112 JPEGs (quality 95) of smooth random texture, a few KB each like aligned faces, written as an
ImageFolder (--identities folders) and packed from it by `python -m common.data.rec pack`'s code (stored byte for byte,
so both loaders decode the same bytes). Each round reads one epoch from each, in turns, so a change in the machine's
load falls on both; the files were just written, so both read from the page cache. Prints images/s for each and
`ratio_rec_over_imagefolder`.

Start-up: the .rec dataset's constructor on --startup-images records (written by the same writer, the image bytes
repeated) against ImageFolderDataset's scan of the same images as files (--no-scan skips writing that many files).
"""
import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from common.data.face_crops import face_transforms  # noqa: E402
from common.data.image_folder import ImageFolderDataset, SeededImageFolder  # noqa: E402
from common.data.rec import RecordDataset, pack_image_folder, write_insightface_rec  # noqa: E402
from common.loaders import make_loader, usable_cores  # noqa: E402
from common.runtime import Runtime  # noqa: E402

RGB112_TRAIN = face_transforms('rgb112')[0]  # train_recognition.py --input rgb112's


def face_like_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """`count` 112 x 112 JPEGs of smooth colour texture with fine grain (compress like aligned face crops)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        image = cv2.resize(coarse, (112, 112), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        image += rng.integers(-12, 13, image.shape, dtype=np.int16)
        images.append(cv2.imencode('.jpg', np.clip(image, 0, 255).astype(np.uint8),
                                   [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    return images


def write_image_folder(root: Path, images: list[bytes], identities: int, count: int) -> Path:
    """root/<identity>/<n>.jpg for `count` images, identity i % identities, the bytes cycled."""
    for identity in range(min(identities, count)):
        (root / f'id_{identity:05d}').mkdir(parents=True, exist_ok=True)
    for n in range(count):
        (root / f'id_{n % identities:05d}' / f'{n:07d}.jpg').write_bytes(images[n % len(images)])
    return root


def epoch_seconds(dataset, args, rt, epoch: int) -> float:
    loader = make_loader(dataset, batch_size=args.batch_size, rt=rt, train=True, workers=args.workers, seed=0)
    dataset.set_epoch(epoch)
    loader.sampler.set_epoch(epoch)
    started = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--images', type=int, default=4000, help='images read per epoch from each')
    parser.add_argument('--identities', type=int, default=100)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--workers', type=int, default=4, help="DataLoader workers (train_recognition.py's default; "
                        'capped at the usable cores as there)')
    parser.add_argument('--rounds', type=int, default=3, help='epochs read from each, in turns')
    parser.add_argument('--startup-images', type=int, default=100_000)
    parser.add_argument('--startup-identities', type=int, default=1000)
    parser.add_argument('--no-scan', action='store_true', help='skip the ImageFolder start-up (writes no files)')
    parser.add_argument('--work', default=None, help='folder for the data (default: a temporary one, removed)')
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix='rec_speed_'))
    rt = Runtime(device=torch.device('cpu'))
    try:
        distinct = face_like_jpegs(min(args.images, 500))
        print(f'{args.images} images of 112x112 (JPEG q95, {np.mean([len(b) for b in distinct]) / 1024:.1f} KB mean), '
              f'{args.identities} identities, batch {args.batch_size}, '
              f'{min(args.workers, usable_cores())} workers, {args.rounds} rounds in turns', flush=True)
        folder = write_image_folder(work / 'folder', distinct, args.identities, args.images)
        pack_image_folder(folder, work / 'rec', size=112, progress=False)
        datasets = {'imagefolder': SeededImageFolder(folder, RGB112_TRAIN, verbose=False),
                    'rec': RecordDataset(work / 'rec', RGB112_TRAIN, verbose=False)}
        assert len(datasets['rec']) == len(datasets['imagefolder']) == args.images
        seconds = dict.fromkeys(datasets, 0.0)
        for epoch in range(args.rounds):
            for name, dataset in datasets.items():
                seconds[name] += epoch_seconds(dataset, args, rt, epoch)
        read = args.rounds * (args.images // args.batch_size) * args.batch_size
        rates = {name: read / s for name, s in seconds.items()}
        for name, rate in rates.items():
            print(f'images_per_s_{name}: {rate:.1f}')
        print(f'ratio_rec_over_imagefolder: {rates["rec"] / rates["imagefolder"]:.2f}x', flush=True)

        # start-up on a large set: the .rec reads its index and identity records, the ImageFolder scans every file
        n, k = args.startup_images, args.startup_identities
        per_identity = -(-n // k)
        write_insightface_rec(work / 'big_rec', ((i // per_identity, distinct[i % len(distinct)]) for i in range(n)))
        started = time.perf_counter()
        big = RecordDataset(work / 'big_rec', RGB112_TRAIN, verbose=False)
        rec_start = time.perf_counter() - started
        print(f'startup_rec_s: {rec_start:.3f} ({len(big)} images, {len(big.classes)} identities)', flush=True)
        if not args.no_scan:
            big_folder = write_image_folder(work / 'big_folder', distinct, k, n)
            started = time.perf_counter()
            scanned = ImageFolderDataset(big_folder, RGB112_TRAIN, verbose=False)
            scan = time.perf_counter() - started
            print(f'startup_imagefolder_s: {scan:.3f} ({len(scanned)} images, {len(scanned.classes)} identities)')
            print(f'startup_ratio_imagefolder_over_rec: {scan / rec_start:.0f}x')
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
