"""Training throughput of one step (forward, loss with its target encoding, backward, optimiser step) for the face
detectors, in the memory layouts and precisions the training scripts can use, measured in the same run.

    python bench/train_speed.py --network retinaface --image-size 320 --batch-size 16 --device cpu
    python bench/train_speed.py --network centerface --image-size 256 --batch-size 16 --device cpu
    python bench/train_speed.py --network retinaface --image-size 640 --batch-size 32 --device cuda   # + AMP rows

Each variant trains the same freshly initialised network on the same random batch (uint8 images and ten random
faces per image, so matching / heatmap encoding run as in training) for --warmup steps, then --steps timed steps.
Variants: NCHW fp32 (the baseline), channels_last fp32, and on CUDA the same two under autocast (bf16 where
supported, else fp16 with loss scaling). Prints images/s per variant and `speedup: X.XXx` of the best over NCHW
fp32; the scripts' default is channels_last on the CPU (`--channels-last/--no-channels-last`).
"""
import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from common import runtime  # noqa: E402
from common.anchors import match, retinaface_priors  # noqa: E402
from common.heatmaps import build_targets  # noqa: E402
from common.losses import CenterNetLoss, MultiBoxLoss  # noqa: E402
from common.models import build_model  # noqa: E402
from common.models.retinaface import NETWORKS  # noqa: E402

# --network: RetinaFace under its backbone's name (the first, MobileNet0.25, also as 'retinaface'), or centerface
ARCHS = {'retinaface': {'name': 'retinaface', 'network': next(iter(NETWORKS))},
         **{network: {'name': 'retinaface', 'network': network} for network in NETWORKS},
         'centerface': {'name': 'centerface'}}


def random_faces(batch: int, size: int, faces: int, generator) -> list[dict]:
    """Per image `faces` boxes of 8 px to size/2 with landmarks inside, in input pixels."""
    targets = []
    for _ in range(batch):
        wh = 8 + torch.rand(faces, 2, generator=generator) * (size / 2 - 8)
        xy = torch.rand(faces, 2, generator=generator) * (size - wh)
        boxes = torch.cat([xy, xy + wh], 1)
        landmarks = xy[:, None] + torch.rand(faces, 5, 2, generator=generator) * wh[:, None]
        targets.append({'boxes': boxes, 'landmarks': landmarks, 'landmark_valid': torch.ones(faces, dtype=torch.bool)})
    return targets


def loss_function(name: str, size: int, device):
    if ARCHS[name]['name'] == 'retinaface':
        priors, criterion = retinaface_priors(size, size, device=device), MultiBoxLoss()

        def loss_fn(model, images, targets):
            loc, conf, landm = model(images)
            matched = match(priors, targets, image_size=(size, size))
            return criterion((loc.float(), conf.float(), landm.float()), matched)
        return loss_fn
    criterion = CenterNetLoss()

    def loss_fn(model, images, targets):
        outputs = model(images)
        return criterion(outputs, build_targets(targets, outputs['hm'].shape[-2:], pos_min=0.5))
    return loss_fn


def images_per_second(args, device, channels_last: bool, amp_dtype) -> float:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = build_model(ARCHS[args.network]).to(device, memory_format=torch.channels_last if channels_last else None)
    model.train()
    images = torch.randint(0, 256, (args.batch_size, 3, args.image_size, args.image_size), dtype=torch.uint8,
                           generator=generator).to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = [{k: v.to(device) for k, v in t.items()}
               for t in random_faces(args.batch_size, args.image_size, 10, generator)]
    loss_fn = loss_function(args.network, args.image_size, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def step():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss, _ = loss_fn(model, images, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(args.warmup):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return args.steps * args.batch_size / (time.perf_counter() - start)


def bench_device(name: str, threads: int) -> torch.device:
    """The device to time on, with `threads` CPU threads for torch (0: its default) and cuDNN's autotuner on."""
    device = runtime.select_device(name)
    if threads:
        torch.set_num_threads(threads)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    return device


def layout_variants(device: torch.device) -> list[tuple[str, bool, torch.dtype | None]]:
    """(label, channels_last, autocast dtype) of the variants to time: NCHW fp32 (the baseline) and channels_last,
    and both under autocast where the device has it."""
    variants = [('NCHW fp32', False, None), ('channels_last fp32', True, None)]
    amp = runtime.amp_dtype_for(device, True)
    if amp is not None:
        label = str(amp).replace('torch.', '')
        variants += [(f'NCHW {label} autocast', False, amp), (f'channels_last {label} autocast', True, amp)]
    return variants


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--network', default='retinaface', choices=sorted(ARCHS))
    parser.add_argument('--image-size', type=int, default=320)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--steps', type=int, default=10, help='timed steps per variant')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps per variant first')
    parser.add_argument('--device', default='cpu', help='cpu, cuda, cuda:N')
    parser.add_argument('--threads', type=int, default=0, help='CPU threads for torch (0: its default)')
    args = parser.parse_args(argv)
    device = bench_device(args.device, args.threads)
    variants = layout_variants(device)
    print(f'{args.network} at {args.image_size} px, batch {args.batch_size}, {device}, '
          f'{torch.get_num_threads()} CPU threads; {args.steps} timed steps after {args.warmup}')
    rates = {}
    for label, channels_last, dtype in variants:
        rates[label] = images_per_second(args, device, channels_last, dtype)
        print(f'{label:>32}: {rates[label]:.1f} images/s')
    best = max(rates, key=rates.get)
    print(f'speedup: {rates[best] / rates["NCHW fp32"]:.2f}x  ({best} over NCHW fp32)')


if __name__ == '__main__':
    main()
