"""Training throughput of one face-recognition step (forward, ArcFace head, focal loss, backward, SGD step) for the
recognition backbones, in the memory layouts and precisions train_recognition.py can use, measured in the same run.

    python bench/recognition_train_speed.py --device cpu
    python bench/recognition_train_speed.py --backbone resnet --resnet-depth 50 --device cpu
    python bench/recognition_train_speed.py --batch-size 128 --device cuda          # + AMP rows: BENCHMARKS.md

Each variant trains the same freshly initialised network on the same random batch (1x128x128 gray, or 3x112x112
with --input rgb112; 1000 identities). Variants take turns step by step over --rounds rounds, so a change in the
machine's load falls on all of them alike. Variants: NCHW fp32 (the baseline), channels_last fp32, and on CUDA the
same two under autocast (bf16 where supported, else fp16 with loss scaling). Prints images/s per variant and each
one's ratio to NCHW fp32; train_recognition.py, like the detector scripts, trains channels_last on the CPU.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from common.losses import SoftmaxFocalLoss  # noqa: E402
from common.models import build_model  # noqa: E402
from common.models.recognition import INPUTS, ArcFace  # noqa: E402
from train_speed import bench_device, layout_variants  # noqa: E402  (bench/ is on sys.path as the script's folder)


def make_step(args, device, channels_last: bool, amp_dtype):
    """A function running one training step of a fresh network in this variant."""
    torch.manual_seed(0)
    arch = {'name': 'recognition', 'backbone': args.backbone, 'input': args.input, 'resnet_depth': args.resnet_depth}
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(arch).to(device, memory_format=layout).train()
    head = ArcFace(512, 1000).to(device)
    face = INPUTS[args.input]
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, face.channels, face.height, face.width,
                         generator=generator).to(device, memory_format=layout)
    labels = torch.randint(0, 1000, (args.batch_size,), generator=generator).to(device)
    criterion = SoftmaxFocalLoss(2.0)
    optimizer = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=1e-3, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def step():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            embeddings = model(images)
        loss = criterion(head(embeddings.float(), labels), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--backbone', default='fmobile', choices=['fmobile', 'resnet'])
    parser.add_argument('--resnet-depth', type=int, default=50)
    parser.add_argument('--input', default='gray128', choices=list(INPUTS))
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--rounds', type=int, default=3, help='timed steps per variant, taken in turns')
    parser.add_argument('--warmup', type=int, default=1, help='untimed steps per variant first')
    parser.add_argument('--device', default='cpu', help='cpu, cuda, cuda:N')
    parser.add_argument('--threads', type=int, default=0, help='CPU threads for torch (0: its default)')
    args = parser.parse_args(argv)
    device = bench_device(args.device, args.threads)
    variants = layout_variants(device)
    print(f'{args.backbone} {args.input}, batch {args.batch_size}, {device}, {torch.get_num_threads()} CPU threads; '
          f'{args.rounds} timed steps each after {args.warmup}, in turns')
    steps = {label: make_step(args, device, channels_last, dtype) for label, channels_last, dtype in variants}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    seconds = dict.fromkeys(steps, 0.0)
    for _ in range(args.rounds):
        for label, step in steps.items():
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            step()
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            seconds[label] += time.perf_counter() - start
    rates = {label: args.rounds * args.batch_size / s for label, s in seconds.items()}
    for label, rate in rates.items():
        print(f'{label:>32}: {rate:.1f} images/s  ({rate / rates["NCHW fp32"]:.2f}x NCHW fp32)')


if __name__ == '__main__':
    main()
