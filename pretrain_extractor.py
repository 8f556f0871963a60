"""Classification pretraining of RetinaNet's extractor (a torchvision ResNet) on an ImageFolder (ImageNet layout:
DATA/train/<class>/*.jpg, DATA/val/<class>/*.jpg), reporting top-1 / top-5 on the val set.

It grows from a RetinaNet tutorial's part one: Resize 480, RandomHorizontalFlip, RandomResizedCrop 224 (scale
0.53-1), a light ColorJitter, ImageNet normalisation; SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 128; the LR
drops x0.1 at fixed iterations (150k, 300k, 550k of 600k); accuracy every step_eval iterations, a checkpoint every
step_save. Each is a flag; the LR steps default to the tutorial's fixed iterations (a run shorter than 150k keeps
its peak LR: pass --lr-steps for a short run on real data), the Resize to the same ratio to --image-size, the LR to
0.1 x batch / 128 (the linear scaling rule) after a warm-up of 5% of the iterations: 0.1 at batch 32 from scratch
diverged. The loop counts iterations, as the tutorial's; a resumed run continues inside its epoch with the batch it
would have drawn next, and every augmentation is a function of (seed, epoch, image). train_retinanet.py
--pretrained-extractor loads the checkpoint (its classifier dropped).

Single device:
    python pretrain_extractor.py --data-root data/imagenet --arch resnet50
Small synthetic run on a CPU (see README for its time and top-1):
    python -m common.synthetic imagefolder --out data/synth_objects --seed 0
    python pretrain_extractor.py --data-root data/synth_objects --arch resnet18 --image-size 96 --iterations 600 \\
        --batch-size 32 --device cpu
Several GPUs (batch size is per GPU):
    torchrun --nproc_per_node=4 pretrain_extractor.py --data-root data/imagenet --batch-size 32
Resume a killed run (same flags plus --resume):
    python pretrain_extractor.py --data-root data/imagenet --resume
Evaluation only:
    python pretrain_extractor.py --data-root data/imagenet --evaluate --weights runs/extractor/last.pt
"""
import argparse
import time

import torch
import torch.nn.functional as F
from torchvision import transforms

from common import runtime
from common.checkpoint import (CheckpointError, CheckpointManager, load_checkpoint, resume_training, rng_states,
                               unwrap)
from common.data.image_folder import SeededImageFolder
from common.loaders import make_loader
from common.metrics_log import LossMeter, MetricsLog, plain_args, progress_bar, write_json
from common.models import build_model, load_pretrained
from common.models.retinanet import EXTRACTORS, RGB_MEAN, RGB_STD, Extractor
from common.optimization import NonFiniteGuard, build_optimizer, iteration_schedule
from common.run_dir import claim_run_dir

# fixed counts, as the tutorial's, not fractions of --iterations: scaled to a 600-iteration run they leave 120
# iterations at the peak LR, and top-1 fell from 0.99 / 0.92 to 0.87 / 0.82 (seeds 1 / 2, README)
TUTORIAL_STEPS = (150_000, 300_000, 550_000)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    groups = runtime.add_shared_flags(parser, data_root='data/imagenet', out='runs/extractor', epochs=0,
                                      batch_size=128, lr=None, workers=4, eval_every=5000, save_every=5000,
                                      unit='iterations', lr_help='peak learning rate (default: the tutorial\'s 0.1 at '
                                      'batch 128, scaled to --batch-size)')
    g = groups['data']
    g.add_argument('--image-size', type=int, default=224, help='RandomResizedCrop size (the tutorial: 224)')
    g.add_argument('--resize', type=int, default=None, help='Resize before the crop (default: 480 / 224 x size)')
    g.add_argument('--crop-scale', type=float, nargs=2, default=[0.53, 1.0], help='RandomResizedCrop area range')
    g.add_argument('--jitter', type=float, default=0.1, help='ColorJitter brightness, contrast, saturation')
    g = groups['model']
    g.add_argument('--arch', default='resnet50', choices=list(EXTRACTORS))
    g = groups['optimisation']
    g.add_argument('--iterations', type=int, default=600000)
    g.add_argument('--optimizer', default='sgd', choices=['sgd', 'adam', 'adamw'])
    g.add_argument('--momentum', type=float, default=0.9)
    g.add_argument('--weight-decay', type=float, default=1e-4)
    g.add_argument('--warmup-iterations', type=int, default=None,
                   help='linear LR warm-up from 0 (default: 5%% of --iterations; the tutorial has none)')
    g.add_argument('--lr-steps', type=int, nargs='*', default=None,
                   help='iterations where the LR drops x0.1 (default: the tutorial\'s 150000 300000 550000)')
    g = groups['run']
    g.add_argument('--log-every', type=int, default=100, help='a metrics row with the training loss every N '
                   'iterations (also at every evaluation and save)')
    g.add_argument('--evaluate', action='store_true', help='only evaluate --weights on val and exit')
    g.add_argument('--weights', default=None, help='classifier to evaluate with --evaluate')
    g.add_argument('--eval-batch-size', type=int, default=64)
    return parser.parse_args(argv)


def data_transforms(args):
    """The tutorial's augmentation at --image-size; val: resize to size / 0.875 and centre crop (ImageNet's)."""
    normalize = transforms.Normalize(RGB_MEAN, RGB_STD)
    resize = args.resize or round(480 / 224 * args.image_size)
    train = transforms.Compose([transforms.Resize(resize), transforms.RandomHorizontalFlip(),
                                transforms.RandomResizedCrop(args.image_size, scale=tuple(args.crop_scale)),
                                transforms.ColorJitter(args.jitter, args.jitter, args.jitter),
                                transforms.ToTensor(), normalize])
    val = transforms.Compose([transforms.Resize(round(args.image_size / 0.875)),
                              transforms.CenterCrop(args.image_size), transforms.ToTensor(), normalize])
    return train, val


@torch.no_grad()
def evaluate(model, val_set, args, rt) -> dict:
    """Top-1 / top-5 accuracy on the whole val set (top-k capped at the number of classes)."""
    model.eval()
    loader = torch.utils.data.DataLoader(val_set, batch_size=args.eval_batch_size, num_workers=min(args.workers, 2))
    k = min(5, len(val_set.classes))
    top1 = top5 = total = 0
    for images, labels in loader:
        images = images.to(rt.device, non_blocking=True, memory_format=rt.memory_format)
        labels = labels.to(rt.device)
        with rt.autocast():
            logits = model(images)
        best = logits.float().topk(k, dim=1).indices
        top1 += int((best[:, 0] == labels).sum())
        top5 += int((best == labels[:, None]).any(dim=1).sum())
        total += len(labels)
    return {'top1': top1 / total, 'top5': top5 / total}


def due(iteration: int, every: int, last: int) -> bool:
    """Whether a periodic task (log, evaluate, save) falls on `iteration`: every `every` iterations, and the last."""
    return iteration == last or (every > 0 and iteration % every == 0)


def training_batches(loader, dataset, start_iteration: int, iters_per_epoch: int, batch_size: int):
    """The batches of pass after pass over the training set, from the one `start_iteration` falls in: a resumed run
    goes on inside its pass with the batch it would have drawn next. Each pass's order is a function of (seed,
    epoch), each augmentation of (seed, epoch, image)."""
    epoch, position = divmod(start_iteration, iters_per_epoch)
    while True:
        dataset.set_epoch(epoch)
        loader.sampler.set_epoch(epoch, start=position * batch_size)
        yield from loader
        epoch, position = epoch + 1, 0


def main(args):
    # ------------------------------------------------------------ set-up
    rt = runtime.setup(args)
    root = runtime.require_path(args.data_root, '--data-root', 'image folder')
    out, where = claim_run_dir(args.out, resume=args.resume, exist_ok=args.exist_ok, rt=rt)  # never over a run
    args.out = str(out)  # args.json, the checkpoints and the evaluation record the directory written to
    rt.print(where)
    if rt.is_main:
        write_json(out / 'args.json', plain_args(args))
    train_tf, val_tf = data_transforms(args)
    try:
        val_set = SeededImageFolder(root / 'val', val_tf, verbose=rt.is_main)
    except FileNotFoundError as e:
        runtime.fail(f'--data-root: {e}')
    if args.evaluate:
        if not args.weights:
            runtime.fail('--evaluate needs --weights W')
        try:
            state = load_checkpoint(runtime.require_path(args.weights, '--weights', 'model file'))
            if not isinstance(state, dict) or (state.get('arch') or {}).get('name') != 'extractor':
                raise CheckpointError(f'{args.weights}: not a pretrain_extractor.py checkpoint (no extractor arch)')
            model = build_model(state['arch'])
            rt.print(load_pretrained(model, state))
        except CheckpointError as e:
            runtime.fail(f'--weights: {e}')
        results = evaluate(model.to(rt.device, memory_format=rt.memory_format), val_set, args, rt)
        write_json(out / 'results.json', results)
        rt.print(f'results: {results} -> {out / "results.json"}')
        return results

    # ------------------------------------------------------------ data: ImageFolder train, augmented per sample
    try:
        train_set = SeededImageFolder(root / 'train', train_tf, verbose=rt.is_main, seed=args.seed)
    except FileNotFoundError as e:
        runtime.fail(f'--data-root: {e}')
    if train_set.classes != val_set.classes:
        runtime.fail(f'--data-root: train/ and val/ hold different classes ({len(train_set.classes)} and '
                     f'{len(val_set.classes)})')
    train_loader = make_loader(train_set, batch_size=args.batch_size, rt=rt, train=True, workers=args.workers,
                               seed=args.seed)
    iters_per_epoch = len(train_loader)
    if iters_per_epoch == 0:
        runtime.fail(f'--batch-size {args.batch_size}: more than the {len(train_set)} training images per process')
    iterations = args.epochs * iters_per_epoch if args.epochs else args.iterations

    # ------------------------------------------------------------ network: the extractor with a classifier
    arch = {'name': 'extractor', 'backbone': args.arch, 'num_classes': len(train_set.classes),
            'classes': list(train_set.classes)}
    model = Extractor(args.arch, len(train_set.classes))
    if args.pretrained and not args.resume:  # e.g. a torchvision ResNet state dict with as many classes
        try:
            rt.print(load_pretrained(model, runtime.require_path(args.pretrained, '--pretrained', 'weights file')))
        except CheckpointError as e:
            runtime.fail(f'--pretrained: {e}')
    model = rt.wrap(model)  # on the device, channels_last on the CPU, DistributedDataParallel under torchrun

    # ------------------------------------------------------------ optimiser and LR schedule (in iterations)
    # the linear scaling rule (Goyal et al.): the tutorial's 0.1 for 128 images a step. From scratch at batch 32 its 0.1
    # without warm-up diverged (synthetic objects: loss 2.7 at iteration 100, chance at 200); 0.025 with 30 warm-up
    # iterations reached top-1 0.93 at 600 with the old scaled LR steps, 0.96 with the fixed ones (README)
    lr = args.lr if args.lr is not None else 0.1 * args.batch_size * rt.world_size / 128
    optimizer = build_optimizer(model, args.optimizer, lr, args.momentum, args.weight_decay)
    lr_steps = args.lr_steps if args.lr_steps is not None else list(TUTORIAL_STEPS)
    warmup = args.warmup_iterations if args.warmup_iterations is not None else round(0.05 * iterations)
    scheduler = iteration_schedule(optimizer, iterations=iterations, warmup_iterations=warmup, milestones=lr_steps)
    scaler = rt.grad_scaler()

    # ------------------------------------------------------------ resume: weights, optimiser, schedule, RNG, metrics
    checkpoints = CheckpointManager(out, keep=args.keep, save_every=args.save_every, prefix='iter')
    log, iteration, best = MetricsLog(out), 0, None
    if args.resume:
        try:
            state = resume_training(checkpoints.last, model=model, optimizer=optimizer, scheduler=scheduler,
                                    scaler=scaler, device=rt.device)
        except CheckpointError as e:
            runtime.fail(f'--resume: {e}')
        iteration, best, log.rows = state['step'], state.get('best'), list(state.get('metrics') or [])
        rt.print(f'resumed from {checkpoints.last} at iteration {iteration}/{iterations}')

    # ------------------------------------------------------------ train: iterations, the data in passes (epochs)
    batches = training_batches(train_loader, train_set, iteration, iters_per_epoch, args.batch_size)
    guard, meter, started, resumed_at = NonFiniteGuard(), LossMeter(), time.perf_counter(), iteration
    bar = progress_bar(None, 'iterations', rt, total=iterations, initial=iteration)
    model.train()
    while True:
        # ---------------------------------------------------- log, evaluate, save (rank 0) at the top, as nanoGPT
        fresh = iteration > resumed_at  # a resumed run does not repeat what it did at its checkpoint
        evaluating = fresh and due(iteration, args.eval_every, iterations)
        saving = fresh and due(iteration, args.save_every, iterations)
        if evaluating or saving or (fresh and due(iteration, args.log_every, iterations)):
            row = {'epoch': iteration / iters_per_epoch, 'iteration': iteration,
                   'lr': optimizer.param_groups[0]['lr'], **meter.means(rt),
                   'images_per_s': meter.samples * rt.world_size / (time.perf_counter() - started),
                   'skipped_steps': guard.skipped}
            if evaluating:
                if rt.is_main:
                    row.update(evaluate(unwrap(model), val_set, args, rt))
                rt.barrier()
                model.train()
            log.append(row)
            is_best = 'top1' in row and (best is None or row['top1'] > best)
            best = row['top1'] if is_best else best
            if rt.is_main:
                if saving or is_best:
                    checkpoints.save({'model': unwrap(model).state_dict(), 'arch': arch,
                                      'optimizer': optimizer.state_dict(), 'scheduler': scheduler.state_dict(),
                                      'scaler': scaler.state_dict(), 'epoch': iteration // iters_per_epoch,
                                      'step': iteration, 'args': plain_args(args), 'metrics': log.rows, 'best': best,
                                      'rng': rng_states()}, iteration, is_best=is_best)
                log.write()
                log.plot(['loss', 'train_acc'], ['top1', 'top5'])
                values = ' '.join(f'{k} {v:.4f}' for k, v in row.items() if k in ('loss', 'train_acc', 'top1', 'top5'))
                rt.print(f'iteration {iteration}/{iterations} {values} lr {row["lr"]:.2e} '
                         f'{row["images_per_s"]:.1f} img/s')
            rt.barrier()
            meter, started = LossMeter(), time.perf_counter()
        if iteration == iterations:
            break

        # ---------------------------------------------------- one step
        images, labels = next(batches)
        images = images.to(rt.device, non_blocking=True, memory_format=rt.memory_format)
        labels = labels.to(rt.device, non_blocking=True)
        try:
            with rt.autocast():
                logits = model(images)
            loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            if guard.check(loss, rt):  # NaN or inf: skip the step (on every process), keep the schedule
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                meter.add(loss, {'train_acc': (logits.detach().argmax(1) == labels).float().mean()}, len(images))
                bar.set_postfix(meter.postfix(), refresh=False)
        except torch.cuda.OutOfMemoryError:
            runtime.fail(f'CUDA out of memory at --batch-size {args.batch_size}: lower it (or --image-size)', 1)
        scheduler.step()
        iteration += 1
        bar.update()
    bar.close()
    batches.close()  # its DataLoader workers stop here

    # ------------------------------------------------------------ results: the last evaluation
    results = {k: log.rows[-1][k] for k in ('top1', 'top5') if log.rows and k in log.rows[-1]}
    if rt.is_main:
        write_json(out / 'results.json', results)
        rt.print(f'results: {results} -> {out / "results.json"}')
    rt.close()
    return results


if __name__ == '__main__':
    main(parse_args())
