"""One prepared GPU measurement, in one command: the training steps of every training script with AMP on and off
and channels_last on and off, RetinaFace's training beside the reference's steps, torchrun with 2 processes on NCCL,
and detect.py's batched throughput. Prints one table and writes it as JSON.

    python bench/cuda_run.py --out cuda.json                      # a CUDA machine: about 5 minutes, under 10
    python bench/cuda_run.py --tiny --device cpu --out tiny.json  # the same code paths on the CPU in seconds (the test)

- train: each script's step (forward, the loss with its target encoding, backward, optimiser step) on a synthetic
  batch at that script's default size, --steps timed steps after --warmup, per variant: NCHW / channels_last x fp32 /
  autocast (bf16 where supported, else fp16 with loss scaling; the CPU has the fp32 rows only, as the scripts train
  there). RetinaFace and CenterFace are bench/train_speed.py's steps, recognition bench/recognition_train_speed.py's;
  the extractor (pretrain_extractor.py) and RetinaNet (train_retinanet.py) steps are here.
- reference: RetinaFace training images/s in fp32 NCHW beside bench/reference_finetune.py's steps (the reference's
  per-image matching and loss, its float input) on the same batch and size.
- torchrun: finetune_retinaface.py for 2 epochs on a synthetic set, one process and then 2 processes with NCCL (one
  per GPU, same per-GPU batch); images/s of the second epoch from its metrics.csv. Needs 2 GPUs (--ddp-on-cpu runs
  it on the CPU with gloo instead, for the test); skipped with a line otherwise.
- detect: images/s of detect.py's FaceDetector in batches of --detect-batch photos (../shared/data/photos, or
  synthetic ones; bench/detect_speed.py's batch_throughput: files read beforehand) against one image per call, with
  the shared RetinaFace (or a fresh one).
Each section is timed on its own; one that fails prints its error in the table and the rest still run.
"""
import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / 'bench'):  # bench/recognition_train_speed.py imports train_speed as a sibling script
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench import recognition_train_speed, train_speed  # noqa: E402
from bench.detect_speed import batch_throughput, loop_priors  # noqa: E402
from bench.reference_finetune import multibox_loss  # noqa: E402
from common.anchors import (RETINANET_RATIOS, RETINANET_SCALES, anchors_for, match_anchors,  # noqa: E402
                            retinanet_anchor_sizes)
from common.inference.detectors import FaceDetector, synchronize  # noqa: E402
from common.inference.load import load_detector_model  # noqa: E402
from common.losses import RetinaNetLoss  # noqa: E402
from common.models import build_model  # noqa: E402
from common.models.retinanet import default_fpn_channels  # noqa: E402

SHARED = REPO.parent / 'shared' / 'data'
# per script: the network and the training input size and batch of its defaults (--tiny: a few pixels and images)
TRAINING = {
    'finetune_retinaface.py': {'network': 'retinaface', 'size': 640, 'batch': 32},
    'train_centernet.py': {'network': 'centerface', 'size': 800, 'batch': 24},
    'train_recognition.py': {'network': 'recognition', 'size': 128, 'batch': 64},
    'pretrain_extractor.py': {'network': 'extractor', 'size': 224, 'batch': 128},
    'train_retinanet.py': {'network': 'retinanet', 'size': 512, 'batch': 16},
}
TINY = {'size': 32, 'batch': 2, 'steps': 1, 'warmup': 0}


# ------------------------------------------------------------------------------------------------ timing

def timed(step, steps: int, warmup: int, device, images_per_step: int) -> float:
    """images/s of `step()` over `steps` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return steps * images_per_step / (time.perf_counter() - start)


def optimiser_step(model_parameters, device, amp_dtype):
    """The scripts' update: SGD, with fp16 loss scaling where autocast runs in fp16."""
    optimizer = torch.optim.SGD(model_parameters, lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def update(loss):
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return update


def extractor_step(size, batch, device, channels_last, amp_dtype, tiny):
    """pretrain_extractor.py's step: the ResNet classifier on a normalised batch, cross-entropy."""
    torch.manual_seed(0)
    arch = {'name': 'extractor', 'arch': 'resnet18' if tiny else 'resnet50', 'num_classes': 10 if tiny else 1000}
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(arch).to(device, memory_format=layout).train()
    images = torch.randn(batch, 3, size, size).to(device, memory_format=layout)
    labels = torch.randint(0, arch['num_classes'], (batch,)).to(device)
    update = optimiser_step(model.parameters(), device, amp_dtype)

    def step():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        update(F.cross_entropy(logits.float(), labels))
    return step


def retinanet_step(size, batch, device, channels_last, amp_dtype, tiny):
    """train_retinanet.py's step: RetinaNet on a uint8 batch, anchor matching for ten random objects per image, focal
    loss + smooth L1."""
    torch.manual_seed(0)
    extractor = 'resnet18' if tiny else 'resnet50'
    arch = {'name': 'retinanet', 'arch': extractor, 'num_classes': 20, 'fpn_channels': default_fpn_channels(extractor),
            'group_norm': True, 'anchor_sizes': list(retinanet_anchor_sizes(size)),
            'anchor_scales': list(RETINANET_SCALES), 'anchor_ratios': list(RETINANET_RATIOS), 'size': size}
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(arch).to(device, memory_format=layout).train()
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
    images = images.to(device, memory_format=layout)
    objects = [{'boxes': face['boxes'].to(device), 'ignore': None,
                'labels': torch.randint(0, 20, (10,), generator=generator).to(device)}
               for face in train_speed.random_faces(batch, size, 10, generator)]
    anchors = anchors_for(arch, size, size, device=device)
    criterion = RetinaNetLoss()
    update = optimiser_step(model.parameters(), device, amp_dtype)

    def step():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = model(images)
        loss, _ = criterion(outputs, match_anchors(anchors, objects), anchors)
        update(loss)
    return step


def training_rate(script, device, channels_last, amp_dtype, args) -> tuple[float, int, int]:
    """(images/s, size, batch) of `script`'s training step in one variant."""
    setting = TRAINING[script]
    size, batch = (TINY['size'], TINY['batch']) if args.tiny else (setting['size'], setting['batch'])
    network = setting['network']
    if network in ('retinaface', 'centerface'):
        namespace = SimpleNamespace(network=network, image_size=size, batch_size=batch, steps=args.steps,
                                    warmup=args.warmup)
        return train_speed.images_per_second(namespace, device, channels_last, amp_dtype), size, batch
    if network == 'recognition':
        namespace = SimpleNamespace(backbone='fmobile', input='gray128', resnet_depth=50, batch_size=batch)
        step = recognition_train_speed.make_step(namespace, device, channels_last, amp_dtype)
        size = 128  # the network's fixed input
    else:
        make = extractor_step if network == 'extractor' else retinanet_step
        step = make(size, batch, device, channels_last, amp_dtype, args.tiny)
    return timed(step, args.steps, args.warmup, device, batch), size, batch


# ------------------------------------------------------------------------------------------------ sections

def train_rows(args, device):
    rows = []
    for script in TRAINING:
        baseline = None
        for label, channels_last, amp_dtype in train_speed.layout_variants(device):
            rate, size, batch = training_rate(script, device, channels_last, amp_dtype, args)
            baseline = baseline or rate
            rows.append({'section': 'train', 'what': script, 'variant': label, 'size': size, 'batch': batch,
                         'images_per_s': rate, 'ratio': rate / baseline, 'ratio_to': 'NCHW fp32'})
    return rows


def reference_rows(args, device):
    """RetinaFace MobileNet0.25: our step (train_speed's, NCHW fp32) beside the reference's on the same faces."""
    size, batch = (TINY['size'], TINY['batch']) if args.tiny else (640, 32)
    namespace = SimpleNamespace(network='retinaface', image_size=size, batch_size=batch, steps=args.steps,
                                warmup=args.warmup)
    ours = train_speed.images_per_second(namespace, device, False, None)

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)  # the batch train_speed makes: same pixels, same faces
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
    faces = train_speed.random_faces(batch, size, 10, generator)
    model = build_model(train_speed.ARCHS['retinaface']).to(device).train()
    mean = torch.tensor((104.0, 117.0, 123.0)).view(1, 3, 1, 1)
    images = (pixels.float() - mean).to(device)  # the reference's input: float BGR minus the mean
    targets = [torch.cat([f['boxes'] / size, f['landmarks'].reshape(-1, 10) / size, torch.ones(len(f['boxes']), 1)],
                         1).to(device) for f in faces]
    priors = torch.from_numpy(loop_priors(size, size)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)

    def step():
        loss_l, loss_c, loss_landm = multibox_loss(model.forward_normalized(images), priors, targets)
        optimizer.zero_grad()
        (2.0 * loss_l + loss_c + loss_landm).backward()
        optimizer.step()
    theirs = timed(step, args.steps, args.warmup, device, batch)
    common = {'section': 'reference', 'size': size, 'batch': batch, 'ratio_to': 'reference'}
    return [{**common, 'what': 'retinaface mobile0.25 step', 'variant': 'reference (Pytorch_Retinaface steps)',
             'images_per_s': theirs, 'ratio': 1.0},
            {**common, 'what': 'retinaface mobile0.25 step', 'variant': 'ours NCHW fp32', 'images_per_s': ours,
             'ratio': ours / theirs}]


def torchrun_rows(args, device, work: Path):
    gpus = torch.cuda.device_count() if device.type == 'cuda' else 0
    if gpus < 2 and not args.ddp_on_cpu:
        return [{'section': 'torchrun', 'what': 'finetune_retinaface.py', 'variant': 'skipped',
                 'note': f'{gpus} CUDA device(s); 2 processes on NCCL need 2 GPUs'}]
    from common.synthetic import make_widerface
    size, batch = (TINY['size'], TINY['batch']) if args.tiny else (640, 32)
    data = make_widerface(work / 'synth', num_images=4 * batch if args.tiny else 16 * batch, seed=0)
    rows, rates = [], {}
    for processes in (1, 2):
        out = work / f'ddp_{processes}'
        launcher = [sys.executable] if processes == 1 else [sys.executable, '-m', 'torch.distributed.run',
                                                            '--standalone', f'--nproc_per_node={processes}']
        command = launcher + [str(REPO / 'finetune_retinaface.py'), '--data-root', str(data), '--out', str(out),
                              '--epochs', '2', '--batch-size', str(batch), '--image-size', str(size),
                              '--workers', '1' if args.tiny else '4', '--eval-every', '0', '--save-every', '0',
                              '--warmup-epochs', '0', '--lr', '1e-4', '--device', 'cpu' if args.ddp_on_cpu else 'cuda',
                              # the last epoch evaluates: no detections to write (a network two epochs from scratch
                              # can decode infinite boxes there), the throughput is what is measured
                              '--conf-thres', '1.0']
        env = {**os.environ, 'OMP_NUM_THREADS': '1'} if args.ddp_on_cpu else None
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
        if done.returncode != 0:
            raise RuntimeError(f'{" ".join(command[:6])} ...: exit {done.returncode}: {done.stderr[-1500:]}')
        with open(out / 'metrics.csv') as f:
            rates[processes] = float(list(csv.DictReader(f))[-1]['images_per_s'])
        rows.append({'section': 'torchrun', 'what': 'finetune_retinaface.py', 'size': size, 'batch': batch,
                     'variant': f'{processes} process{"es" if processes > 1 else ""}, '
                                f'{"gloo on the CPU" if args.ddp_on_cpu else "NCCL" if processes > 1 else "1 GPU"}',
                     'images_per_s': rates[processes], 'ratio': rates[processes] / rates[1],
                     'ratio_to': '1 process'})
    return rows


def detect_rows(args, device, work: Path):
    """bench/detect_speed.py's batch throughput of detect.py's FaceDetector, one image per call and --detect-batch."""
    import cv2
    weights = SHARED / 'weights' / 'retinaface_mobilenet0.25_Final.pth'
    if weights.is_file() and not args.tiny:
        model, arch = load_detector_model(weights, 'mobile0.25', device)
    else:
        torch.manual_seed(0)
        arch = dict(train_speed.ARCHS['retinaface'])
        model = build_model(arch).to(device).eval()
    photos = sorted((SHARED / 'photos').glob('*.jpg')) if not args.tiny else []
    if not photos:
        generator = np.random.default_rng(0)
        for i in range(3):
            photos.append(work / f'photo_{i}.png')
            cv2.imwrite(str(photos[-1]), generator.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    detector = FaceDetector(model, arch, device, conf_thres=0.5, max_size=args.detect_max_size)
    rows = []
    for batch in (1, TINY['batch'] if args.tiny else args.detect_batch):
        rate = batch_throughput(detector, photos, batch, device)
        rows.append({'section': 'detect', 'what': 'FaceDetector retinaface mobile0.25', 'variant': f'batch {batch}',
                     'size': f'long side <= {args.detect_max_size}', 'batch': batch, 'images_per_s': rate,
                     'ratio': rate / rows[0]['images_per_s'] if rows else 1.0, 'ratio_to': 'batch 1'})
    return rows


# ------------------------------------------------------------------------------------------------ main

def machine(device) -> dict:
    info = {'torch': torch.__version__, 'python': platform.python_version(), 'device': str(device),
            'cpu_threads': torch.get_num_threads(), 'platform': platform.platform()}
    if device.type == 'cuda':
        info.update(gpu=torch.cuda.get_device_name(device), gpus=torch.cuda.device_count(), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported())
    return info


def print_table(rows):
    print(f'{"section":<10} {"what":<36} {"variant":<34} {"size":>8} {"batch":>5} {"images/s":>10} {"ratio":>7}')
    for row in rows:
        if 'images_per_s' in row:
            print(f'{row["section"]:<10} {row["what"]:<36} {row["variant"]:<34} {str(row["size"]):>8} '
                  f'{row["batch"]:>5} {row["images_per_s"]:>10.1f} {row["ratio"]:>6.2f}x')
        else:
            print(f'{row["section"]:<10} {row["what"]:<36} {row["variant"]}: {row.get("note", "")}')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--device', default='cuda', help='cuda, cuda:N, or cpu')
    parser.add_argument('--out', default='cuda_bench.json', help='the JSON file written')
    parser.add_argument('--tiny', action='store_true', help='tiny sizes and batches, a few steps: the code paths in '
                        'seconds, numbers meaningless')
    parser.add_argument('--steps', type=int, default=None, help='timed steps per variant (default 20; --tiny 1)')
    parser.add_argument('--warmup', type=int, default=None, help='untimed steps first (default 5; --tiny 0)')
    parser.add_argument('--sections', nargs='+', default=['train', 'reference', 'torchrun', 'detect'],
                        choices=['train', 'reference', 'torchrun', 'detect'])
    parser.add_argument('--ddp-on-cpu', action='store_true', help='run the torchrun section on the CPU with gloo')
    parser.add_argument('--detect-batch', type=int, default=8, help='the batched detect.py run\'s batch size')
    parser.add_argument('--detect-max-size', type=int, default=1024, help='detect: the long side cap, so photos '
                        'of different sizes batch together')
    parser.add_argument('--threads', type=int, default=0, help='CPU threads for torch (0: its default)')
    args = parser.parse_args(argv)
    args.steps = args.steps or (TINY['steps'] if args.tiny else 20)
    args.warmup = args.warmup if args.warmup is not None else (TINY['warmup'] if args.tiny else 5)
    return args


def main(argv=None):
    args = parse_args(argv)
    device = train_speed.bench_device(args.device, args.threads)
    info = machine(device)
    print(', '.join(f'{k} {v}' for k, v in info.items()), flush=True)
    sections = {'train': train_rows, 'reference': reference_rows, 'torchrun': torchrun_rows, 'detect': detect_rows}
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix='cuda_bench.') as work:
        for name in args.sections:
            began = time.perf_counter()
            try:
                needs_folder = name in ('torchrun', 'detect')
                found = sections[name](args, device, Path(work)) if needs_folder else sections[name](args, device)
            except Exception as e:  # one broken section must not cost the others' numbers
                traceback.print_exc()
                found = [{'section': name, 'what': 'failed', 'variant': type(e).__name__, 'note': str(e)[:300]}]
            rows += found
            print(f'{name}: {time.perf_counter() - began:.1f} s', flush=True)
    print_table(rows)
    result = {'machine': info, 'tiny': args.tiny, 'steps': args.steps, 'warmup': args.warmup,
              'seconds': round(time.perf_counter() - started, 1), 'rows': rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f'{len(rows)} rows in {result["seconds"]} s -> {args.out}')
    return result


if __name__ == '__main__':
    main()
