"""Training throughput of RetinaNet by FPN / tower width: the paper's 256 (the baseline) against the narrower towers
train_retinanet.py uses on resnet18/34, measured in the same run with the steps of the variants taking turns.

    python bench/retinanet_width.py --arch resnet18 --size 256 --batch-size 8 --device cpu
    python bench/retinanet_width.py --arch resnet50 --size 512 --batch-size 16 --device cuda --widths 256 128

One step is what train_retinanet.py's loop does: forward (channels_last on the CPU, as the script), anchor matching
for the batch, focal + smooth L1 loss, backward, SGD step, on a fixed uint8 batch with six random objects per image.
Prints images/s per width and each width's speedup over 256.
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
from common.anchors import match_anchors, retinanet_anchor_sizes, retinanet_anchors  # noqa: E402
from common.losses import RetinaNetLoss  # noqa: E402
from common.models.retinanet import EXTRACTORS, RetinaNet  # noqa: E402


def random_objects(batch: int, size: int, generator) -> list[dict]:
    targets = []
    for _ in range(batch):
        wh = 12 + torch.rand(6, 2, generator=generator) * (size / 2 - 12)
        xy = torch.rand(6, 2, generator=generator) * (size - wh)
        targets.append({'boxes': torch.cat([xy, xy + wh], 1), 'labels': torch.randint(0, 6, (6,), generator=generator)})
    return targets


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--arch', default='resnet18', choices=list(EXTRACTORS))
    parser.add_argument('--size', type=int, default=256)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--widths', type=int, nargs='+', default=[256, 128, 64], help='the first is the baseline')
    parser.add_argument('--rounds', type=int, default=4, help='timed steps per width (taking turns)')
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args(argv)
    device = runtime.select_device(args.device)
    layout = torch.channels_last if device.type == 'cpu' else torch.contiguous_format
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch_size, 3, args.size, args.size), dtype=torch.uint8, generator=generator)
    images = images.to(device).contiguous(memory_format=layout)
    targets = [{k: v.to(device) for k, v in t.items()} for t in random_objects(args.batch_size, args.size, generator)]
    anchors = retinanet_anchors(args.size, args.size, retinanet_anchor_sizes(args.size), device=device)
    criterion = RetinaNetLoss()
    models = {w: RetinaNet(6, args.arch, w).to(device, memory_format=layout).train() for w in args.widths}
    optimizers = {w: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for w, m in models.items()}

    def step(width):
        loss, _ = criterion(models[width](images), match_anchors(anchors, targets), anchors)
        optimizers[width].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[width].step()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    for width in args.widths:  # warm-up: allocator, kernels, first-touch
        step(width)
    seconds = {w: [] for w in args.widths}
    for _ in range(args.rounds):
        for width in args.widths:
            start = time.perf_counter()
            step(width)
            seconds[width].append(time.perf_counter() - start)
    print(f'RetinaNet {args.arch} at {args.size} px, batch {args.batch_size}, {device}, '
          f'{torch.get_num_threads()} CPU threads; median of {args.rounds} steps per width, taking turns')
    rates = {w: args.batch_size / sorted(s)[len(s) // 2] for w, s in seconds.items()}
    baseline = args.widths[0]
    for width, rate in rates.items():
        print(f'width {width:>4}: {rate:6.2f} images/s  speedup {rate / rates[baseline]:.2f}x over {baseline}')


if __name__ == '__main__':
    main()
