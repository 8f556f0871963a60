"""RetinaNet on Pascal VOC: a ResNet extractor (from pretrain_extractor.py, a torchvision ImageNet file, or
scratch), FPN P3-P7, focal loss, 9 anchors per cell; VOC07 test mAP with the devkit's rules.

It grows from a RetinaNet tutorial's part two: anchor targets with an ignore band, focal loss, SGD 0.01 with
momentum, a pretrained extractor loaded with `module.` stripped, optional frozen BatchNorm, a checkpoint every few
steps, and an evaluator (ours follows the devkit: common/evaluation/voc.py). Matching: IoU >= 0.5 object, < 0.4
background, in between ignored, every object keeps its best anchor (common/anchors.py); loss = focal (alpha 0.25,
gamma 2) + smooth L1 (or --box-loss giou), normalised by the object anchors (common/losses.py). Difficult objects
are kept and flagged: the anchors they take are ignored in training (--train-difficult learns them) and the
evaluation ignores them. Augmentation: photometric distortion, pad to square, random square crop, flip, resize to
--size (common/data/voc.py); the test pads to square and resizes the whole image. Network: common/models/retinanet.py.

Single device (VOC07+12 trainval, VOC07 test):
    python train_retinanet.py --data-root data/VOCdevkit --pretrained-extractor resnet50-0676ba61.pth
From our own pretraining, BatchNorm frozen:
    python train_retinanet.py --data-root data/VOCdevkit --pretrained-extractor runs/extractor/last.pt --freeze-bn
Small synthetic run on a CPU, from scratch (see README for its time and mAP):
    python -m common.synthetic voc --out data/synth_voc --num-images 300 --seed 0
    python train_retinanet.py --data-root data/synth_voc/VOCdevkit --years 2007 --arch resnet18 --size 256 \\
        --epochs 24 --device cpu
Several GPUs (batch size is per GPU):
    torchrun --nproc_per_node=4 train_retinanet.py --data-root data/VOCdevkit --batch-size 8
Resume a killed run (same flags plus --resume):
    python train_retinanet.py --data-root data/VOCdevkit --resume
Evaluation only (writes OUT/detections/comp4_det_test_<class>.txt, scores them, OUT/results.json):
    python train_retinanet.py --data-root data/VOCdevkit --evaluate --weights runs/retinanet/best.pt
"""
import argparse
import time
from pathlib import Path

import torch

from common import runtime
from common.anchors import (RETINANET_RATIOS, RETINANET_SCALES, anchors_for, decode_retinanet, match_anchors,
                            retinanet_anchor_sizes)
from common.checkpoint import CheckpointError, CheckpointManager, resume_training, rng_states, unwrap
from common.data.voc import VOC_CROP_SCALES, AnnotationError, VOCDataset, VOCTestTransform, VOCTrainTransform
from common.evaluation.voc import evaluate_files, write_detections
from common.inference.load import load_detector_model
from common.inference.nms import postprocess_objects
from common.loaders import detection_collate, make_loader, to_device
from common.losses import RetinaNetLoss
from common.metrics_log import LossMeter, MetricsLog, plain_args, progress_bar, summary_line, write_json
from common.models import load_pretrained
from common.models.retinanet import EXTRACTORS, RetinaNet, default_fpn_channels
from common.optimization import NonFiniteGuard, build_optimizer, epoch_schedule
from common.run_dir import claim_run_dir
from common.visualize import plot_pr_curves


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    groups = runtime.add_shared_flags(parser, data_root='data/VOCdevkit', out='runs/retinanet', epochs=24,
                                      batch_size=16, lr=1e-2, workers=4, eval_every=6, save_every=6)
    g = groups['data']
    g.add_argument('--years', nargs='+', default=['2007', '2012'], help='VOC<year> folders whose trainval trains')
    g.add_argument('--test-year', default='2007', help='VOC<year> whose test split evaluates')
    g.add_argument('--size', type=int, default=None, help='square network input (default 512; --evaluate: the '
                   'checkpoint\'s)')
    g.add_argument('--crop-scales', type=float, nargs='+', default=list(VOC_CROP_SCALES),
                   help='random square crop sides as fractions of the padded image, drawn uniformly from this list')
    g.add_argument('--photometric', action=argparse.BooleanOptionalAction, default=True,
                   help='random brightness, contrast, saturation and hue')
    g = groups['model']
    g.add_argument('--arch', default='resnet50', choices=list(EXTRACTORS), help='extractor')
    g.add_argument('--pretrained-extractor', default=None,
                   help='extractor weights: a pretrain_extractor.py checkpoint or a torchvision ResNet state dict')
    g.add_argument('--freeze-bn', action='store_true', help='keep the extractor\'s BatchNorm fixed')
    g.add_argument('--fpn-channels', type=int, default=None,
                   help='FPN and tower width (default: 256 on resnet50/101, 128 on resnet18/34)')
    g.add_argument('--group-norm', action=argparse.BooleanOptionalAction, default=True, help='GroupNorm in towers')
    g.add_argument('--anchor-sizes', type=float, nargs=5, default=None,
                   help='base anchor size of P3..P7 in input pixels (default: 32..512 x min(1, size/512))')
    g.add_argument('--anchor-scales', type=float, nargs='+', default=list(RETINANET_SCALES))
    g.add_argument('--anchor-ratios', type=float, nargs='+', default=list(RETINANET_RATIOS), help='height/width')
    g = groups['optimisation']
    g.add_argument('--optimizer', default='sgd', choices=['sgd', 'adam', 'adamw'])
    g.add_argument('--momentum', type=float, default=0.9)
    g.add_argument('--weight-decay', type=float, default=1e-4)
    g.add_argument('--warmup-epochs', type=float, default=1, help='linear LR warm-up from 0')
    g.add_argument('--lr-steps', type=float, nargs='*', default=None,
                   help='epochs where the LR drops x0.1 (default: 2/3 and 8/9 of --epochs, as 8 and 11 of 12)')
    g.add_argument('--schedule', default='step', choices=['step', 'cosine', 'constant'])
    g.add_argument('--fg-iou', type=float, default=0.5, help='anchor-object IoU that makes an object anchor')
    g.add_argument('--bg-iou', type=float, default=0.4, help='below this IoU an anchor is background')
    g.add_argument('--alpha', type=float, default=0.25, help='focal loss alpha')
    g.add_argument('--gamma', type=float, default=2.0, help='focal loss gamma')
    g.add_argument('--box-loss', default='smooth_l1', choices=['smooth_l1', 'giou'])
    g.add_argument('--box-weight', type=float, default=1.0)
    g.add_argument('--train-difficult', action='store_true', help='learn difficult objects instead of ignoring them')
    g.add_argument('--grad-clip', type=float, default=0.0, help='clip the gradient norm (0: off)')
    g = groups['run']
    g.add_argument('--evaluate', action='store_true', help='only evaluate --weights on the test split and exit')
    g.add_argument('--weights', default=None, help='model to evaluate with --evaluate')
    g.add_argument('--use-07-metric', action=argparse.BooleanOptionalAction, default=True,
                   help='VOC2007 11-point AP (--no-use-07-metric: all-point, VOC2010+)')
    g.add_argument('--conf-thres', type=float, default=0.05, help='evaluation score threshold')
    g.add_argument('--nms-thres', type=float, default=0.5, help='evaluation NMS IoU threshold (per class)')
    g.add_argument('--top-k', type=int, default=1000, help='candidates per image before NMS')
    g.add_argument('--keep-top-k', type=int, default=100, help='detections per image after NMS')
    g.add_argument('--eval-batch-size', type=int, default=8)
    return parser.parse_args(argv)


@torch.no_grad()
def evaluate(model, arch, test_set, args, rt):
    """VOC AP on the test split: OUT/detections/comp4_det_test_<class>.txt, scored by common.evaluation.voc."""
    model.eval()
    loader = torch.utils.data.DataLoader(test_set, batch_size=args.eval_batch_size, collate_fn=detection_collate,
                                         num_workers=min(args.workers, 2))
    anchors, detections = None, {}
    for images, targets in loader:
        images = images.to(rt.device, non_blocking=True, memory_format=rt.memory_format)
        if anchors is None:
            anchors = anchors_for(arch, *images.shape[-2:], device=rt.device)
        with rt.autocast():
            cls_logits, box_offsets = model(images)
        found = postprocess_objects(*decode_retinanet(cls_logits, box_offsets, anchors, args.top_k),
                                    conf_thres=args.conf_thres, nms_thres=args.nms_thres,
                                    keep_top_k=args.keep_top_k, scales=[t['scale'] for t in targets],
                                    image_sizes=[t['image_size'] for t in targets])
        detections.update({t['name']: {k: v.cpu().numpy() for k, v in f.items()} for t, f in zip(targets, found)})
    folder, year_dir = Path(args.out) / 'detections', test_set.year_dirs[0]
    write_detections(folder, test_set.classes, detections)
    scored = evaluate_files(str(folder / 'comp4_det_test_{}.txt'), str(year_dir / 'Annotations' / '{}.xml'),
                            year_dir / 'ImageSets' / 'Main' / 'test.txt', test_set.classes, args.use_07_metric)
    plot_pr_curves(scored['curves'], Path(args.out) / 'pr_curves.png', title='VOC test precision-recall')
    return {'mAP': scored['mAP'], **{f'ap_{name}': ap for name, ap in scored['ap'].items()}}


def voc_results(row: dict) -> dict:
    """results.json: {'mAP', 'ap': {class: AP}} from a metrics row."""
    return {'mAP': row['mAP'], 'ap': {k[3:]: v for k, v in row.items() if k.startswith('ap_')}}


def main(args):
    # ------------------------------------------------------------ set-up
    rt = runtime.setup(args)
    root = runtime.require_path(args.data_root, '--data-root', 'VOCdevkit folder')
    out, where = claim_run_dir(args.out, resume=args.resume, exist_ok=args.exist_ok, rt=rt)  # never over a run
    args.out = str(out)  # args.json, the checkpoints and the evaluation record the directory written to
    rt.print(where)
    if rt.is_main:
        write_json(out / 'args.json', plain_args(args))
    if args.evaluate:  # the network and its anchors are rebuilt from the checkpoint's arch
        if not args.weights:
            runtime.fail('--evaluate needs --weights W')
        try:
            model, arch = load_detector_model(runtime.require_path(args.weights, '--weights', 'model file'), None,
                                              rt.device)
            if arch.get('name') != 'retinanet':
                raise CheckpointError(f'{args.weights}: a {arch.get("name")} checkpoint, not a RetinaNet')
            test_set = VOCDataset(root / f'VOC{args.test_year}', 'test', VOCTestTransform(args.size or arch['size']),
                                  classes=arch['classes'], verbose=rt.is_main)
        except CheckpointError as e:
            runtime.fail(f'--weights: {e}')
        except (FileNotFoundError, AnnotationError) as e:
            runtime.fail(f'--data-root: {e}')
        results = voc_results(evaluate(model, arch, test_set, args, rt))
        write_json(out / 'results.json', results)
        rt.print(f'mAP {results["mAP"]:.4f} -> {out / "results.json"}')
        return results

    # ------------------------------------------------------------ data: VOC trainval of --years, VOC07 test
    size = args.size or 512
    try:
        train_set = VOCDataset([root / f'VOC{year}' for year in args.years], 'trainval',
                               VOCTrainTransform(size, args.crop_scales, distort=args.photometric),
                               verbose=rt.is_main, seed=args.seed)
        test_set = VOCDataset(root / f'VOC{args.test_year}', 'test', VOCTestTransform(size),
                              classes=train_set.classes, verbose=rt.is_main)
    except (FileNotFoundError, AnnotationError) as e:
        runtime.fail(f'--data-root: {e}')
    train_loader = make_loader(train_set, batch_size=args.batch_size, rt=rt, train=True, workers=args.workers,
                               collate_fn=detection_collate, seed=args.seed)
    if len(train_loader) == 0:
        runtime.fail(f'--batch-size {args.batch_size}: more than the {len(train_set)} training images per process')

    # ------------------------------------------------------------ network, from --pretrained-extractor weights
    arch = {'name': 'retinanet', 'backbone': args.arch, 'num_classes': len(train_set.classes),
            'classes': list(train_set.classes), 'fpn_channels': args.fpn_channels or default_fpn_channels(args.arch),
            'group_norm': args.group_norm,
            'anchor_sizes': list(args.anchor_sizes or retinanet_anchor_sizes(size)),
            'anchor_scales': args.anchor_scales, 'anchor_ratios': args.anchor_ratios, 'size': size}
    model = RetinaNet(arch['num_classes'], args.arch, arch['fpn_channels'], args.group_norm,
                      len(args.anchor_scales) * len(args.anchor_ratios))
    for flag, path in (('--pretrained-extractor', args.pretrained_extractor), ('--pretrained', args.pretrained)):
        if path and not args.resume:  # extractor weights go into model.body; a whole RetinaNet of ours loads whole
            try:
                rt.print(load_pretrained(model, runtime.require_path(path, flag, 'weights file')))
            except CheckpointError as e:
                runtime.fail(f'{flag}: {e}')
    if args.freeze_bn:
        model.freeze_bn()
    model = rt.wrap(model)  # on the device, channels_last on the CPU, DistributedDataParallel under torchrun

    # ------------------------------------------------------------ anchors, targets (common/anchors.py) and loss
    anchors = anchors_for(arch, size, size, device=rt.device)
    criterion = RetinaNetLoss(alpha=args.alpha, gamma=args.gamma, box_loss=args.box_loss, box_weight=args.box_weight)

    # ------------------------------------------------------------ optimiser and LR schedule (stepped every iteration)
    optimizer = build_optimizer(model, args.optimizer, args.lr, args.momentum, args.weight_decay)
    lr_steps = args.lr_steps if args.lr_steps is not None else [round(args.epochs * 2 / 3), round(args.epochs * 8 / 9)]
    scheduler = epoch_schedule(optimizer, iters_per_epoch=len(train_loader), epochs=args.epochs,
                               warmup_epochs=args.warmup_epochs, schedule=args.schedule, milestones=lr_steps)
    scaler = rt.grad_scaler()

    # ------------------------------------------------------------ resume: weights, optimiser, schedule, RNG, metrics
    checkpoints = CheckpointManager(out, keep=args.keep, save_every=args.save_every)
    log, start_epoch, best = MetricsLog(out), 1, None
    if args.resume:
        try:
            state = resume_training(checkpoints.last, model=model, optimizer=optimizer, scheduler=scheduler,
                                    scaler=scaler, device=rt.device)
        except CheckpointError as e:
            runtime.fail(f'--resume: {e}')
        start_epoch, best, log.rows = state['epoch'] + 1, state.get('best'), list(state.get('metrics') or [])
        rt.print(f'resumed from {checkpoints.last} at epoch {state["epoch"]}/{args.epochs}')

    # ------------------------------------------------------------ train
    guard = NonFiniteGuard()
    for epoch in range(start_epoch, args.epochs + 1):
        model.train()
        train_set.set_epoch(epoch)  # augmentations: a function of (seed, epoch, image)
        train_loader.sampler.set_epoch(epoch)  # shuffle order: a function of (seed, epoch)
        meter, lr, started = LossMeter(), optimizer.param_groups[0]['lr'], time.perf_counter()
        bar = progress_bar(train_loader, f'epoch {epoch}/{args.epochs}', rt)
        try:
            for images, targets in bar:
                images = images.to(rt.device, non_blocking=True, memory_format=rt.memory_format)
                targets = to_device(targets, rt.device)
                with rt.autocast():
                    outputs = model(images)
                objects = [{'boxes': t['boxes'], 'labels': t['labels'],
                            'ignore': None if args.train_difficult else t['difficult']} for t in targets]
                matched = match_anchors(anchors, objects, fg_iou=args.fg_iou, bg_iou=args.bg_iou)
                loss, parts = criterion(outputs, matched, anchors)
                optimizer.zero_grad(set_to_none=True)
                if not guard.check(loss, rt):  # NaN or inf: skip the step (on every process), keep the schedule
                    scheduler.step()
                    continue
                scaler.scale(loss).backward()
                if args.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                meter.add(loss, parts, len(images))
                bar.set_postfix(meter.postfix(), refresh=False)
        except torch.cuda.OutOfMemoryError:
            runtime.fail(f'CUDA out of memory at --batch-size {args.batch_size}: lower it (or --size)', 1)
        bar.close()
        elapsed = time.perf_counter() - started
        row = {'epoch': epoch, 'lr': lr, **meter.means(rt), 'images_per_s': meter.samples * rt.world_size / elapsed,
               'skipped_steps': guard.skipped}

        # ------------------------------------------------------------ evaluate, log, save (rank 0)
        if (args.eval_every > 0 and epoch % args.eval_every == 0) or epoch == args.epochs:
            if rt.is_main:
                row.update(evaluate(unwrap(model), arch, test_set, args, rt))
            rt.barrier()
        row['epoch_time_s'] = time.perf_counter() - started
        log.append(row)
        is_best = 'mAP' in row and (best is None or row['mAP'] > best)
        best = row['mAP'] if is_best else best
        if rt.is_main:
            checkpoints.save({'model': unwrap(model).state_dict(), 'arch': arch, 'optimizer': optimizer.state_dict(),
                              'scheduler': scheduler.state_dict(), 'scaler': scaler.state_dict(), 'epoch': epoch,
                              'step': scheduler.last_epoch, 'args': plain_args(args), 'metrics': log.rows,
                              'best': best, 'rng': rng_states()}, epoch, is_best=is_best)
            log.write()
            log.plot(['loss', 'cls', 'box'], ['mAP'])
            rt.print(summary_line({k: v for k, v in row.items() if not k.startswith('ap_')}, args.epochs))
        rt.barrier()

    # ------------------------------------------------------------ results: the last evaluation
    results = voc_results(log.rows[-1]) if log.rows and 'mAP' in log.rows[-1] else {}
    if rt.is_main:
        write_json(out / 'results.json', results)
        rt.print(f'results: mAP {results.get("mAP", float("nan")):.4f} -> {out / "results.json"}')
    rt.close()
    return results


if __name__ == '__main__':
    main(parse_args())
