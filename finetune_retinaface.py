"""RetinaFace on WIDER FACE: train from an ImageNet backbone or finetune a trained model, with five landmarks, and
report the official WIDER FACE Easy / Medium / Hard AP.

The recipe is Pytorch_Retinaface's (SGD, momentum 0.9, weight decay 5e-4, 640 px crops, matching at IoU 0.35,
7:1 hard negatives, loss = 2 loc + cls + landmarks) with the MindFace finetune tutorial's warm-up. Evaluation follows
Pytorch_Retinaface's test_widerface.py: original size, score > 0.02, NMS 0.4, no top-k caps, integer boxes.
`--data-root` holds train/, val/ (label.txt + images/) and ground_truth/ (the official .mat files); build it from
the official download with `python -m common.data.prepare_widerface`, or make a synthetic one with
`python -m common.synthetic widerface --out data/synth`.

Single device:
    python finetune_retinaface.py --data-root data/widerface --pretrained weights/mobilenetV1X0.25_pretrain.tar
Finetune a trained Pytorch_Retinaface model for 10 epochs:
    python finetune_retinaface.py --data-root data/widerface --pretrained mobilenet0.25_Final.pth \\
        --epochs 10 --warmup-epochs 1
Several GPUs (batch size is per GPU):
    torchrun --nproc_per_node=4 finetune_retinaface.py --data-root data/widerface --batch-size 8
Resume a killed run (same flags plus --resume):
    python finetune_retinaface.py --data-root data/widerface --resume
Evaluation only (original size, or --test-size 1600 --max-size 2150):
    python finetune_retinaface.py --data-root data/widerface --evaluate --weights runs/retinaface/best.pt
"""
import argparse
import time
from pathlib import Path

import torch

from common import runtime
from common.anchors import match, retinaface_priors
from common.checkpoint import CheckpointError, CheckpointManager, resume_training, rng_states, unwrap
from common.data.transforms import TrainTransform
from common.data.widerface import LabelFormatError, WiderFaceDataset
from common.evaluation.widerface_run import add_evaluation_flags, evaluate_widerface
from common.inference.load import load_detector_model
from common.loaders import detection_collate, make_loader, to_device
from common.losses import MultiBoxLoss
from common.metrics_log import LossMeter, MetricsLog, plain_args, progress_bar, summary_line, write_json
from common.models import load_pretrained
from common.models.retinaface import NETWORKS, RetinaFace
from common.optimization import NonFiniteGuard, build_optimizer, epoch_schedule
from common.run_dir import claim_run_dir


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    groups = runtime.add_shared_flags(parser, data_root='data/widerface', out='runs/retinaface', epochs=250,
                                      batch_size=32, lr=1e-2, workers=4, eval_every=10, save_every=10)
    g = groups['data']
    g.add_argument('--image-size', type=int, default=640, help='square training crop size')
    g.add_argument('--whole-face-crops', action=argparse.BooleanOptionalAction, default=True,
                   help='take a random crop only when a face lies wholly inside it (the reference\'s rule; '
                        '--no-whole-face-crops: when a face centre does)')
    g = groups['model']
    g.add_argument('--network', default='mobile0.25', choices=list(NETWORKS))
    g = groups['optimisation']
    g.add_argument('--optimizer', default='sgd', choices=['sgd', 'adam', 'adamw'])
    g.add_argument('--momentum', type=float, default=0.9)
    g.add_argument('--weight-decay', type=float, default=5e-4)
    g.add_argument('--warmup-epochs', type=float, default=5, help='linear LR warm-up from 0 (MindFace: 5)')
    g.add_argument('--lr-steps', type=float, nargs='*', default=None,
                   help='epochs where the LR drops x0.1 (default: 76%% and 88%% of --epochs, as 190 and 220 of 250)')
    g.add_argument('--schedule', default='step', choices=['step', 'cosine', 'constant'])
    g.add_argument('--overlap', type=float, default=0.35, help='prior-face IoU that makes a prior a face')
    g.add_argument('--neg-pos-ratio', type=float, default=7, help='hard negatives per positive in the class loss')
    g.add_argument('--loc-weight', type=float, default=2.0, help='weight of the box loss')
    add_evaluation_flags(groups['run'])  # --evaluate --weights, the reference's evaluation settings
    return parser.parse_args(argv)


def main(args):
    # ------------------------------------------------------------ set-up
    rt = runtime.setup(args)
    runtime.require_path(args.data_root, '--data-root', 'dataset folder')
    out, where = claim_run_dir(args.out, resume=args.resume, exist_ok=args.exist_ok, rt=rt)  # never over a run
    args.out = str(out)  # args.json, the checkpoints and the evaluation record the directory written to
    rt.print(where)
    if rt.is_main:
        write_json(out / 'args.json', plain_args(args))
    if args.evaluate:  # --weights is ours (the network is rebuilt from its arch) or a Pytorch_Retinaface state dict
        if not args.weights:
            runtime.fail('--evaluate needs --weights W (our checkpoint or a Pytorch_Retinaface state dict)')
        weights = runtime.require_path(args.weights, '--weights', 'model file')
        try:
            model, arch = load_detector_model(weights, args.network, rt.device)
        except CheckpointError as e:
            runtime.fail(f'--weights: {e}')
        results = evaluate_widerface(model, arch, args, rt.device, log=rt.print)
        write_json(out / 'results.json', results)
        return results

    # ------------------------------------------------------------ data: WIDER FACE train split, augmented
    try:
        transform = TrainTransform(args.image_size, whole_face=args.whole_face_crops)
        train_set = WiderFaceDataset(Path(args.data_root) / 'train', transform, verbose=rt.is_main, seed=args.seed)
    except (FileNotFoundError, LabelFormatError) as e:
        runtime.fail(str(e))
    train_loader = make_loader(train_set, batch_size=args.batch_size, rt=rt, train=True, workers=args.workers,
                               collate_fn=detection_collate, seed=args.seed)
    if len(train_loader) == 0:
        runtime.fail(f'--batch-size {args.batch_size}: more than the {len(train_set)} training images per process')

    # ------------------------------------------------------------ network, from --pretrained weights
    arch = {'name': 'retinaface', 'network': args.network}
    model = RetinaFace(args.network)
    if args.pretrained and not args.resume:  # a backbone (ImageNet) or a whole detector (ours, Pytorch_Retinaface)
        try:
            rt.print(load_pretrained(model, runtime.require_path(args.pretrained, '--pretrained', 'weights file')))
        except CheckpointError as e:
            runtime.fail(f'--pretrained: {e}')
    model = rt.wrap(model)  # on the device, channels_last on the CPU, DistributedDataParallel under torchrun

    # ------------------------------------------------------------ targets and loss
    priors = retinaface_priors(args.image_size, args.image_size, device=rt.device)
    criterion = MultiBoxLoss(neg_pos_ratio=args.neg_pos_ratio, loc_weight=args.loc_weight)

    # ------------------------------------------------------------ optimiser and LR schedule (stepped every iteration)
    optimizer = build_optimizer(model, args.optimizer, args.lr, args.momentum, args.weight_decay)
    lr_steps = args.lr_steps if args.lr_steps is not None else [round(0.76 * args.epochs), round(0.88 * args.epochs)]
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
                    loc, conf, landm = model(images)
                matched = match(priors, targets, threshold=args.overlap, image_size=images.shape[-2:])
                loss, parts = criterion((loc.float(), conf.float(), landm.float()), matched)
                optimizer.zero_grad(set_to_none=True)
                if not guard.check(loss, rt):  # NaN or inf: skip the step (on every process), keep the schedule
                    scheduler.step()
                    continue
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                meter.add(loss, parts, len(images))
                bar.set_postfix(meter.postfix(), refresh=False)
        except torch.cuda.OutOfMemoryError:
            runtime.fail(f'CUDA out of memory at --batch-size {args.batch_size}: lower it (or --image-size)', 1)
        bar.close()
        elapsed = time.perf_counter() - started
        row = {'epoch': epoch, 'lr': lr, **meter.means(rt), 'images_per_s': meter.samples * rt.world_size / elapsed,
               'skipped_steps': guard.skipped}

        # ------------------------------------------------------------ evaluate, log, save (rank 0)
        if (args.eval_every > 0 and epoch % args.eval_every == 0) or epoch == args.epochs:
            if rt.is_main:
                row.update(evaluate_widerface(unwrap(model), arch, args, rt.device, log=rt.print))
            rt.barrier()
        row['epoch_time_s'] = time.perf_counter() - started
        log.append(row)
        is_best = 'easy' in row and (best is None or row['easy'] > best)
        best = row['easy'] if is_best else best
        if rt.is_main:
            checkpoints.save({'model': unwrap(model).state_dict(), 'arch': arch, 'optimizer': optimizer.state_dict(),
                              'scheduler': scheduler.state_dict(), 'scaler': scaler.state_dict(), 'epoch': epoch,
                              'step': scheduler.last_epoch, 'args': plain_args(args), 'metrics': log.rows,
                              'best': best, 'rng': rng_states()}, epoch, is_best=is_best)
            log.write()
            log.plot(['loss', 'loc', 'cls', 'landm'], ['easy', 'medium', 'hard'])
            rt.print(summary_line(row, args.epochs))
        rt.barrier()

    # ------------------------------------------------------------ results: the last evaluation
    results = {k: log.rows[-1][k] for k in ('easy', 'medium', 'hard') if log.rows and k in log.rows[-1]}
    if rt.is_main:
        write_json(out / 'results.json', results)
        rt.print(f'results: {results} -> {out / "results.json"}')
    rt.close()
    return results


if __name__ == '__main__':
    main(parse_args())
