"""CenterFace on WIDER FACE: an anchor-free face detector with five landmarks (CenterNet heads at stride 4 on
MobileNetV2), trained from scratch or from ImageNet weights, reporting the official WIDER FACE Easy / Medium / Hard AP.

It grows from the "Build Your Own Face Detection Model" chapter: heads {'hm': 1, 'wh': 2, 'lm': 10, 'off': 2} with
head_conv 24, Adam at 5e-4, batch 24, 50 epochs, input 800 px, loss = hm + off + 0.1 wh + 0.1 lm, a checkpoint every
epoch. Every one of those is a flag. What changed, and why (each measured from scratch on synthetic faces, see
README.md):
  - the heatmap loss is CenterNet's focal loss (`--hm-loss mse` is the tutorial's), with size-adaptive Gaussians
    (`--sigma S` is the tutorial's fixed one);
  - the regression losses count every target (the tutorial's dropped zero and negative ones), at the centre cell
    and at the nearby cells of high Gaussian value (`--reg-min`), which also count as heatmap peaks (`--pos-min`):
    a large face teaches "face here" and its box at many cells per step instead of one;
  - box sizes are log(size / 4) with the head starting at a typical face, so `--wh-weight` is 1 (0.1 suited the
    tutorial's raw pixel sizes); Adam's LR is 4e-3 after a 1-epoch warm-up (5e-4 learns several times slower from
    scratch); crops keep the whole box of a face they cut, so faces larger than the input are learnt at full size.
Targets and decoding: common/heatmaps.py; network: common/models/centerface.py. Data is the RetinaFace layout and
augmentation (crop, colour, flip, resize to --image-size): `--data-root` holds train/, val/ (label.txt + images/)
and ground_truth/ (the official .mat files); make a synthetic one with `python -m common.synthetic widerface`.

Single device:
    python train_centernet.py --data-root data/widerface
From ImageNet weights (torchvision's MobileNetV2 file, e.g. mobilenet_v2-b0353104.pth):
    python train_centernet.py --data-root data/widerface --pretrained weights/mobilenet_v2-b0353104.pth
Small synthetic run on a CPU (about 10 minutes on 2 cores; Easy AP about 0.9):
    python -m common.synthetic widerface --out data/synth --num-images 400 --seed 0
    python train_centernet.py --data-root data/synth --image-size 256 --epochs 20 --batch-size 16 --device cpu
Several GPUs (batch size is per GPU):
    torchrun --nproc_per_node=4 train_centernet.py --data-root data/widerface --batch-size 24
Resume a killed run (same flags plus --resume):
    python train_centernet.py --data-root data/widerface --resume
Evaluation only (original size, score > 0.02, NMS 0.4, no top-k caps, as the RetinaFace script; writes
OUT/predictions/<event>/<name>.txt and OUT/results.json):
    python train_centernet.py --data-root data/widerface --evaluate --weights runs/centerface/best.pt
Detection on photos with the trained checkpoint:
    python detect.py --weights runs/centerface/best.pt --source photos/
The authors' released model, converted (python -m common.models.convert; the network comes from its arch):
    python train_centernet.py --data-root data/widerface --evaluate --weights weights/centerface.pt
    python train_centernet.py --data-root data/widerface --pretrained weights/centerface.pt
"""
import argparse
import time
from pathlib import Path

import torch

from common import runtime
from common.checkpoint import CheckpointError, CheckpointManager, load_checkpoint, resume_training, rng_states, unwrap
from common.data.transforms import TrainTransform
from common.data.widerface import LabelFormatError, WiderFaceDataset
from common.evaluation.widerface_run import add_evaluation_flags, evaluate_widerface
from common.heatmaps import build_targets
from common.inference.load import load_detector_model
from common.loaders import detection_collate, make_loader, to_device
from common.losses import CenterNetLoss
from common.metrics_log import LossMeter, MetricsLog, plain_args, progress_bar, summary_line, write_json
from common.models import load_pretrained
from common.models.centerface import CenterFace, ReleasedCenterFace
from common.optimization import NonFiniteGuard, build_optimizer, epoch_schedule
from common.run_dir import claim_run_dir


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    groups = runtime.add_shared_flags(parser, data_root='data/widerface', out='runs/centerface', epochs=50,
                                      batch_size=24, lr=4e-3, workers=4, eval_every=10, save_every=10)
    g = groups['data']
    g.add_argument('--image-size', type=int, default=800, help='square training input (the tutorial: 800)')
    g = groups['model']
    g.add_argument('--width-mult', type=float, default=1.0, help='MobileNetV2 width multiplier')
    g.add_argument('--neck-channels', type=int, default=24, help='channels of the upsampling neck')
    g.add_argument('--head-conv', type=int, default=24, help='channels of each head\'s 3x3 conv')
    g.add_argument('--down', type=int, default=4, choices=[4, 8], help='output stride of the heatmaps')
    g = groups['optimisation']
    g.add_argument('--optimizer', default='adam', choices=['sgd', 'adam', 'adamw'])
    g.add_argument('--momentum', type=float, default=0.9, help='SGD momentum')
    g.add_argument('--weight-decay', type=float, default=0.0)
    g.add_argument('--warmup-epochs', type=float, default=1, help='linear LR warm-up from 0')
    g.add_argument('--lr-steps', type=float, nargs='*', default=None,
                   help='epochs where the LR drops x0.1 (default: 70%% and 90%% of --epochs)')
    g.add_argument('--schedule', default='step', choices=['step', 'cosine', 'constant'])
    g.add_argument('--hm-loss', default='focal', choices=['focal', 'mse'],
                   help='heatmap loss: CenterNet focal loss, or the tutorial\'s MSE')
    g.add_argument('--sigma', type=float, default=None,
                   help='fixed Gaussian sigma in output cells (the tutorial); default: size-adaptive radius')
    g.add_argument('--reg-min', type=float, default=0.5,
                   help='cells where a face\'s Gaussian is >= this also regress its box and landmarks (weighted); '
                        '1: the centre cell only, as CenterNet')
    g.add_argument('--pos-min', type=float, default=0.5,
                   help='cells where a face\'s Gaussian is >= this are heatmap peaks too (1: the centre cell only)')
    g.add_argument('--hm-weight', type=float, default=1.0)
    g.add_argument('--off-weight', type=float, default=1.0)
    g.add_argument('--wh-weight', type=float, default=1.0, help='weight of the log box size loss (the tutorial: 0.1)')
    g.add_argument('--lm-weight', type=float, default=0.1)
    g.add_argument('--grad-clip', type=float, default=0.0, help='clip the gradient norm (0: off)')
    add_evaluation_flags(groups['run'])  # --evaluate --weights, the same evaluation settings as RetinaFace's
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
    if args.evaluate:  # the network is rebuilt from the checkpoint's arch
        if not args.weights:
            runtime.fail('--evaluate needs --weights W')
        weights = runtime.require_path(args.weights, '--weights', 'model file')
        try:
            model, arch = load_detector_model(weights, None, rt.device)
        except CheckpointError as e:
            runtime.fail(f'--weights: {e}')
        results = evaluate_widerface(model, arch, args, rt.device, log=rt.print)
        write_json(out / 'results.json', results)
        return results

    # ------------------------------------------------------------ data: WIDER FACE train split, augmented
    # whole boxes of faces the crop cuts: the size head must learn faces larger than the training input
    try:
        train_set = WiderFaceDataset(Path(args.data_root) / 'train', TrainTransform(args.image_size, clip_boxes=False),
                                     verbose=rt.is_main, seed=args.seed)
    except (FileNotFoundError, LabelFormatError) as e:
        runtime.fail(str(e))
    train_loader = make_loader(train_set, batch_size=args.batch_size, rt=rt, train=True, workers=args.workers,
                               collate_fn=detection_collate, seed=args.seed)
    if len(train_loader) == 0:
        runtime.fail(f'--batch-size {args.batch_size}: more than the {len(train_set)} training images per process')

    # ------------------------------------------------------------ network, from --pretrained weights
    arch = {'name': 'centerface', 'width_mult': args.width_mult, 'neck_channels': args.neck_channels,
            'head_conv': args.head_conv, 'down': args.down}
    if args.pretrained:  # a whole CenterFace of ours (e.g. the converted released model) brings its own arch
        try:
            pretrained = load_checkpoint(runtime.require_path(args.pretrained, '--pretrained', 'weights file'))
        except CheckpointError as e:
            runtime.fail(f'--pretrained: {e}')
        if isinstance(pretrained, dict) and isinstance(pretrained.get('arch'), dict):
            if pretrained['arch'].get('name') != 'centerface':
                runtime.fail(f'--pretrained {args.pretrained}: a {pretrained["arch"].get("name")} checkpoint, '
                             f'not a CenterFace')
            arch = pretrained['arch']
    if arch.get('variant') == 'released':  # the authors' layers (common/models/centerface.py)
        if args.image_size % 32:
            runtime.fail(f'--image-size {args.image_size}: the released CenterFace takes sides that are multiples '
                         f'of 32')
        model = ReleasedCenterFace()
    else:
        model = CenterFace(arch['width_mult'], arch['neck_channels'], arch['head_conv'], arch['down'])
    if args.pretrained and not args.resume:  # torchvision's ImageNet MobileNetV2, or a whole CenterFace of ours
        try:
            rt.print(load_pretrained(model, args.pretrained))
        except CheckpointError as e:
            runtime.fail(f'--pretrained: {e}')
    model = rt.wrap(model)  # on the device, channels_last on the CPU, DistributedDataParallel under torchrun

    # ------------------------------------------------------------ targets (common/heatmaps.py) and loss
    criterion = CenterNetLoss(hm_loss=args.hm_loss, hm_weight=args.hm_weight, off_weight=args.off_weight,
                              wh_weight=args.wh_weight, lm_weight=args.lm_weight)

    # ------------------------------------------------------------ optimiser and LR schedule (stepped every iteration)
    optimizer = build_optimizer(model, args.optimizer, args.lr, args.momentum, args.weight_decay)
    lr_steps = args.lr_steps if args.lr_steps is not None else [round(0.7 * args.epochs), round(0.9 * args.epochs)]
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
                encoded = build_targets(targets, outputs['hm'].shape[-2:], down=args.down, sigma=args.sigma,
                                        reg_min=args.reg_min, pos_min=args.pos_min)
                loss, parts = criterion(outputs, encoded)
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
            log.plot(['loss', 'hm', 'off', 'wh', 'lm'], ['easy', 'medium', 'hard'])
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
