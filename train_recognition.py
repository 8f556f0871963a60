"""Face recognition: a FaceMobileNet or IR-SE ResNet embedding trained through an ArcFace or CosFace margin head on an
ImageFolder of aligned faces (one folder per person) or an insightface training set (a folder with train.rec and
train.idx, common/data/rec.py), verified on LFW pairs and insightface .bin sets after every epoch (the standard
10-fold accuracy, common/evaluation/lfw.py).

It grows from the "Build Your Own Face Recognition Model" chapter, whose knobs are flags with its defaults: gray
1x128x128 input (Grayscale, RandomHorizontalFlip, Resize 144, RandomCrop 128, Normalize 0.5/0.5; test: Grayscale,
Resize 128, Normalize), --backbone fmobile | resnet, a 512-d embedding, --metric arcface (s 30, m 0.5) | cosface
(s 30, m 0.4), --loss focal_loss (gamma 2) | cross_entropy, --optimizer sgd (no momentum, as the tutorial's) | adam,
lr 0.1, x0.1 every 10 epochs, weight decay 5e-4, batch 64, 30 epochs, a checkpoint every epoch. --input rgb112 takes
insightface's 3x112x112 aligned faces instead. --backbone mobilefacenet is the published MobileFaceNet (128-d, its
released input by default: 3x112x96 SphereFace-aligned RGB, (p - 127.5) / 128; --input rgb112 for 112 x 112 faces);
its released checkpoint loads as it is (--weights or --pretrained mobilefacenet_068.ckpt). The input convention is
recorded in the checkpoint, so --evaluate and --export-embeddings need no flags for it. Verification embeds each
image and its mirror image (summed, then L2-normalised; --no-flip turns that off). The network:
common/models/recognition.py; aligned faces from raw photos: python -m common.align.

Single device (CASIA-WebFace as an ImageFolder, LFW aligned to 128 px, either pair list):
    python train_recognition.py --data-root data/CASIA-WebFace --test-root data/lfw-align-128 \\
        --test-list data/lfw/pairs.txt
insightface's sets (faces_emore: train.rec + train.idx, lfw.bin, cfp_fp.bin, agedb_30.bin beside them):
    python train_recognition.py --data-root data/faces_emore --input rgb112 --test-bin data/faces_emore/lfw.bin \\
        --test-bin data/faces_emore/cfp_fp.bin --test-bin data/faces_emore/agedb_30.bin
Synthetic people on a CPU (made by `python -m common.synthetic identities --out data/identities --seed 0`):
    python train_recognition.py --data-root data/identities/train --test-root data/identities/test \\
        --test-list data/identities/pairs.txt --epochs 15 --device cpu
Several GPUs (batch size is per GPU):
    torchrun --nproc_per_node=4 train_recognition.py --data-root data/CASIA-WebFace --batch-size 128 ...
Resume a killed run (same flags plus --resume):
    python train_recognition.py ... --resume
Verification only, and embeddings of a folder of faces for `python -m common.evaluation.lfw --embeddings`:
    python train_recognition.py --evaluate --weights runs/recognition/best.pt --test-root ... --test-list ...
    python train_recognition.py --weights runs/recognition/best.pt --export-embeddings data/lfw-align-128 \\
        --out lfw_embeddings.npz
The released MobileFaceNet on faces aligned by `python -m common.align --template sphereface`:
    python train_recognition.py --evaluate --backbone mobilefacenet --weights mobilefacenet_068.ckpt \\
        --test-root data/lfw-sphereface --test-list data/lfw/pairs.txt
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import runtime
from common.checkpoint import CheckpointError, CheckpointManager, resume_training, rng_states, unwrap
from common.evaluation.lfw import FOLDS, PairsFormatError, bin_scores, cosine_scores, embed_images, ordered_folds, \
    read_pairs, roc_curve, unreadable_images, verification_report
from common.data.face_crops import face_transforms
from common.data.image_folder import SeededImageFolder
from common.data.images import image_files, pil_image_problem
from common.data.rec import RecordDataset, RecordIOError, is_rec_folder
from common.data.verification_bin import VerificationBinError, read_verification_bin
from common.inference.recognizer import load_recognition_model
from common.loaders import make_loader
from common.losses import SoftmaxFocalLoss
from common.metrics_log import LossMeter, MetricsLog, plain_args, progress_bar, summary_line, write_json
from common.models import load_pretrained
from common.models.recognition import BACKBONES, HEADS, INPUTS, RESNET_STAGES, build_recognition
from common.optimization import NonFiniteGuard, build_optimizer, epoch_schedule
from common.run_dir import claim_run_dir
from common.visualize import plot_roc

RESULT_KEYS = ('acc_10fold', 'std_10fold', 'acc_best_threshold', 'threshold')
BIN_KEYS = ('acc_10fold_', 'std_10fold_')  # + a .bin file's name: acc_10fold_lfw, std_10fold_cfp_fp, ...
TEST_ROOT, TEST_LIST = 'data/lfw-align-128', 'data/lfw/pairs.txt'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    groups = runtime.add_shared_flags(parser, data_root='data/CASIA-WebFace', out='runs/recognition', epochs=30,
                                      batch_size=64, lr=0.1, workers=4, eval_every=1, save_every=1)
    g = groups['data']
    g.add_argument('--test-root', default=None, help=f'aligned test faces the pair list names (default: {TEST_ROOT}, '
                   f'unless only --test-bin is given)')
    g.add_argument('--test-list', default=None,
                   help='pairs: official pairs.txt or the tutorial\'s "a.jpg b.jpg label" list (told by content; '
                        f'default: {TEST_LIST}, unless only --test-bin is given)')
    g.add_argument('--test-bin', action='append', default=[], metavar='FILE',
                   help='an insightface verification .bin (lfw.bin, cfp_fp.bin, ...) scored at every evaluation as '
                        'acc_10fold_<name>; repeat for several')
    g.add_argument('--input', default=None, choices=list(INPUTS),
                   help='gray128: the tutorial\'s 1x128x128 (default); rgb112: 3x112x112 (insightface alignment); '
                   'rgb112x96: the released MobileFaceNet\'s 3x112x96 (SphereFace; its default)')
    g.add_argument('--test-batch-size', type=int, default=60)
    g.add_argument('--flip', action=argparse.BooleanOptionalAction, default=True,
                   help='add the mirror image\'s embedding before normalising (verification and export)')
    g = groups['model']
    g.add_argument('--backbone', default='fmobile', choices=list(BACKBONES))
    g.add_argument('--resnet-depth', type=int, default=50, choices=sorted(RESNET_STAGES), help='IR-SE ResNet layers')
    g.add_argument('--drop-ratio', type=float, default=0.5, help='dropout before the ResNet\'s embedding layer')
    g.add_argument('--embedding-size', type=int, default=None, help='default 512; 128 for mobilefacenet')
    g.add_argument('--metric', default='arcface', choices=list(HEADS), help='margin head')
    g.add_argument('--scale', type=float, default=30.0, help='s: logits are s * cos(theta)')
    g.add_argument('--margin', type=float, default=None, help='m (default: 0.5 for arcface, 0.4 for cosface)')
    g.add_argument('--easy-margin', action='store_true', help='ArcFace: apply the margin only where cos(theta) > 0')
    g = groups['optimisation']
    g.add_argument('--optimizer', default='sgd', choices=['sgd', 'adam', 'adamw'])
    g.add_argument('--momentum', type=float, default=0.0, help='SGD momentum (the tutorial\'s SGD has none)')
    g.add_argument('--weight-decay', type=float, default=5e-4)
    g.add_argument('--lr-step', type=int, default=10, help='multiply the LR by --lr-gamma every N epochs')
    g.add_argument('--lr-gamma', type=float, default=0.1)
    g.add_argument('--schedule', default='step', choices=['step', 'cosine', 'constant'])
    g.add_argument('--warmup-epochs', type=float, default=0, help='linear LR warm-up from 0')
    g.add_argument('--loss', default='focal_loss', choices=['focal_loss', 'cross_entropy'])
    g.add_argument('--focal-gamma', type=float, default=2.0)
    g = groups['run']
    g.add_argument('--evaluate', action='store_true', help='only verify --weights on the test sets and exit')
    g.add_argument('--weights', default=None, help='checkpoint for --evaluate and --export-embeddings (or the '
                   'released MobileFaceNet file)')
    g.add_argument('--export-embeddings', default=None, metavar='DIR',
                   help='embed every image under DIR with --weights into --out FILE.npz (keys: paths relative to DIR)')
    args = parser.parse_args(argv)
    mobilefacenet = args.backbone == 'mobilefacenet'  # its released input and embedding unless told otherwise
    args.input = args.input or ('rgb112x96' if mobilefacenet else 'gray128')
    args.embedding_size = args.embedding_size or (128 if mobilefacenet else 512)
    if not mobilefacenet and INPUTS[args.input].height != INPUTS[args.input].width:
        parser.error(f'--input {args.input} is for --backbone mobilefacenet; {args.backbone} takes square faces')
    return args


def load_test_pairs(args):
    """The pair list, after checking that every image it names is under --test-root and readable; None when only
    --test-bin files are given."""
    if args.test_bin and args.test_root is None and args.test_list is None:
        return None
    args.test_root, args.test_list = args.test_root or TEST_ROOT, args.test_list or TEST_LIST
    runtime.require_path(args.test_root, '--test-root', 'test image folder')
    runtime.require_path(args.test_list, '--test-list', 'pair list')
    try:
        pairs = read_pairs(args.test_list)
    except PairsFormatError as e:
        runtime.fail(f'--test-list: {e}')
    problems = unreadable_images(args.test_root, pairs.images())
    if problems:
        runtime.fail(f'--test-list {args.test_list}: {len(problems)} of its images cannot be used: '
                     f'{", ".join(problems[:3])}{", ..." if len(problems) > 3 else ""}')
    return pairs


def load_test_bins(args) -> dict:
    """{name: VerificationPairs} of each --test-bin file (name: the file's stem), its images decoded once and kept."""
    bins = {}
    for path in args.test_bin:
        runtime.require_path(path, '--test-bin', 'verification .bin')
        if Path(path).stem in bins:
            runtime.fail(f'--test-bin {path}: a second file named {Path(path).stem} (results are keyed by the name)')
        try:
            bins[Path(path).stem] = pairs = read_verification_bin(path)
        except VerificationBinError as e:
            runtime.fail(f'--test-bin: {e}')
        if len(pairs) < FOLDS:
            runtime.fail(f'--test-bin {path}: {len(pairs)} pairs; the {FOLDS}-fold protocol needs at least {FOLDS}')
    return bins


def verify(model, pairs, bins, input_name, args, rt, roc_path=None) -> dict:
    """10-fold verification accuracy of the model on the pair list (and the optimistic best-threshold one) and on
    each .bin (acc_10fold_<name>, std_10fold_<name>: its folds in file order, as insightface takes them)."""
    transform = face_transforms(input_name)[1]
    options = dict(batch_size=args.test_batch_size, workers=min(args.workers, 2), flip=args.flip,
                   autocast=rt.autocast, memory_format=rt.memory_format)
    results = {}
    if pairs is not None:
        vectors = embed_images(unwrap(model), args.test_root, pairs.images(), transform, rt.device, **options)
        scores = cosine_scores(vectors, pairs)
        report = verification_report(scores, pairs.same, pairs.fold)
        if roc_path:
            fpr, tpr, auc = roc_curve(scores, pairs.same)
            plot_roc(fpr, tpr, roc_path, label=f'AUC {auc:.4f}, 10-fold acc {report["acc_10fold"]:.4f}',
                     title=f'ROC: {Path(args.test_list).name}')
        results.update({k: report[k] for k in RESULT_KEYS})
    for name, bin_pairs in bins.items():  # 112 x 112 ArcFace crops, fitted to the network's input (face_crops.py)
        scores = bin_scores(unwrap(model), bin_pairs, face_transforms(input_name, arcface_crops=True)[1], rt.device,
                            **options)
        report = verification_report(scores, bin_pairs.same, ordered_folds(len(scores)))
        results[f'acc_10fold_{name}'], results[f'std_10fold_{name}'] = report['acc_10fold'], report['std_10fold']
    return results


def load_backbone(args, rt):
    """The embedding network of --weights: a checkpoint of this script (the network is rebuilt from its arch) or the
    released MobileFaceNet file (common/inference/recognizer.py)."""
    if not args.weights:
        runtime.fail('--evaluate and --export-embeddings need --weights W (a checkpoint of this script)')
    path = runtime.require_path(args.weights, '--weights', 'model file')
    try:
        model, arch = load_recognition_model(path)
    except CheckpointError as e:
        runtime.fail(f'--weights: {str(e).splitlines()[0]}')
    return model.to(rt.device, memory_format=rt.memory_format), arch


def export_embeddings(args, rt):
    """Every image under --export-embeddings DIR -> one .npz (key: path relative to DIR, value: unit vector)."""
    root = runtime.require_path(args.export_embeddings, '--export-embeddings', 'image folder')
    model, arch = load_backbone(args, rt)
    found = sorted(p.relative_to(root).as_posix() for p in image_files(root))
    problems = {path: pil_image_problem(root / path) for path in found}
    paths = [path for path in found if not problems[path]]
    skipped = [f'{path} ({why})' for path, why in problems.items() if why]
    if not paths:
        runtime.fail(f'--export-embeddings {root}: no readable images in it')
    vectors = embed_images(model, root, paths, face_transforms(arch['input'])[1], rt.device,
                           batch_size=args.test_batch_size, workers=min(args.workers, 2), flip=args.flip,
                           autocast=rt.autocast, memory_format=rt.memory_format)
    out = Path(args.out) if args.out.endswith('.npz') else Path(args.out) / 'embeddings.npz'
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.npz', dir=out.parent)  # written whole, then renamed: never half a file
    with os.fdopen(fd, 'wb') as f:
        np.savez(f, **vectors)
    os.replace(tmp, out)
    rt.print(f'{len(paths)} embeddings of {root} -> {out}'
             + (f'; skipped {len(skipped)} unreadable: {", ".join(skipped[:3])}' if skipped else ''))
    return out


def main(args):
    # ------------------------------------------------------------ set-up
    rt = runtime.setup(args)
    if args.export_embeddings:
        return export_embeddings(args, rt)
    if not args.evaluate:
        runtime.require_path(args.data_root, '--data-root', 'training image folder')
    pairs, bins = load_test_pairs(args), load_test_bins(args)
    out, where = claim_run_dir(args.out, resume=args.resume, exist_ok=args.exist_ok, rt=rt)  # never over a run
    args.out = str(out)  # args.json and the checkpoints record the directory written to
    rt.print(where)
    if args.evaluate:  # the network is rebuilt from the checkpoint's arch
        model, arch = load_backbone(args, rt)
        results = verify(model, pairs, bins, arch['input'], args, rt, roc_path=out / 'roc.png')
        write_json(out / 'results.json', results)
        rt.print(f'results: {results} -> {out / "results.json"}')
        return results
    # best.pt: the best 10-fold accuracy on the pair list, or on the first .bin without one
    best_key = 'acc_10fold' if pairs is not None else f'acc_10fold_{next(iter(bins))}'
    if rt.is_main:
        write_json(out / 'args.json', plain_args(args))

    # ------------------------------------------------------------ data: one folder per person (or a .rec), augmented
    rec = is_rec_folder(args.data_root)  # insightface's train.rec + train.idx: 112 x 112 ArcFace crops
    train_transform = face_transforms(args.input, arcface_crops=rec)[0]
    try:
        if rec:
            train_set = RecordDataset(args.data_root, train_transform, verbose=rt.is_main, seed=args.seed)
        else:
            train_set = SeededImageFolder(args.data_root, train_transform, verbose=rt.is_main, seed=args.seed)
    except (FileNotFoundError, RecordIOError) as e:
        runtime.fail(f'--data-root: {e}')
    train_loader = make_loader(train_set, batch_size=args.batch_size, rt=rt, train=True, workers=args.workers,
                               seed=args.seed)
    if len(train_loader) == 0:
        runtime.fail(f'--batch-size {args.batch_size}: more than the {len(train_set)} training images per process')

    # ------------------------------------------------------------ network (the embedding) and its margin head
    arch = {'name': 'recognition', 'backbone': args.backbone, 'input': args.input,
            'embedding_size': args.embedding_size, 'resnet_depth': args.resnet_depth, 'drop_ratio': args.drop_ratio}
    model = build_recognition(arch)  # FaceMobileNet or an IR-SE ResNet, as arch says (common/models/recognition.py)
    if args.pretrained and not args.resume:  # a checkpoint of this script (its backbone; the head starts afresh)
        try:
            rt.print(load_pretrained(model, runtime.require_path(args.pretrained, '--pretrained', 'weights file')))
        except CheckpointError as e:
            runtime.fail(f'--pretrained: {e}')
    margin = args.margin if args.margin is not None else {'arcface': 0.5, 'cosface': 0.4}[args.metric]
    options = {'easy_margin': args.easy_margin} if args.metric == 'arcface' else {}
    head = HEADS[args.metric](args.embedding_size, len(train_set.classes), s=args.scale, m=margin, **options)
    model, head = rt.wrap(model), rt.wrap(head)  # on the device; DistributedDataParallel under torchrun

    # ------------------------------------------------------------ loss
    criterion = SoftmaxFocalLoss(args.focal_gamma) if args.loss == 'focal_loss' else torch.nn.CrossEntropyLoss()

    # ------------------------------------------------------------ optimiser over network and head; LR x gamma per step
    optimizer = build_optimizer(torch.nn.ModuleList([model, head]), args.optimizer, args.lr, args.momentum,
                                args.weight_decay)
    lr_steps = list(range(args.lr_step, args.epochs + 1, args.lr_step)) if args.lr_step > 0 else []
    scheduler = epoch_schedule(optimizer, iters_per_epoch=len(train_loader), epochs=args.epochs,
                               warmup_epochs=args.warmup_epochs, schedule=args.schedule, milestones=lr_steps,
                               gamma=args.lr_gamma)
    scaler = rt.grad_scaler()

    # ------------------------------------------------------------ resume: weights, head, optimiser, schedule, RNG
    checkpoints = CheckpointManager(out, keep=args.keep, save_every=args.save_every)
    log, start_epoch, best = MetricsLog(out), 1, None
    if args.resume:
        try:
            state = resume_training(checkpoints.last, model=model, optimizer=optimizer, scheduler=scheduler,
                                    scaler=scaler, device=rt.device)
            unwrap(head).load_state_dict(state['head'])
        except (CheckpointError, KeyError, RuntimeError) as e:
            runtime.fail(f'--resume: {checkpoints.last}: {str(e).splitlines()[0]} (a run on other identities or '
                         f'with another head cannot be resumed)')
        start_epoch, best, log.rows = state['epoch'] + 1, state.get('best'), list(state.get('metrics') or [])
        rt.print(f'resumed from {checkpoints.last} at epoch {state["epoch"]}/{args.epochs}')

    # ------------------------------------------------------------ train
    guard = NonFiniteGuard()
    for epoch in range(start_epoch, args.epochs + 1):
        model.train()
        head.train()
        train_set.set_epoch(epoch)  # augmentations: a function of (seed, epoch, image)
        train_loader.sampler.set_epoch(epoch)  # shuffle order: a function of (seed, epoch)
        meter, lr, started = LossMeter(), optimizer.param_groups[0]['lr'], time.perf_counter()
        bar = progress_bar(train_loader, f'epoch {epoch}/{args.epochs}', rt)
        try:
            for images, labels in bar:
                images = images.to(rt.device, non_blocking=True, memory_format=rt.memory_format)
                labels = labels.to(rt.device, non_blocking=True)
                with rt.autocast():
                    embeddings = model(images)
                logits = head(embeddings.float(), labels)  # float32: the margin arithmetic near cos = 1 needs it
                loss = criterion(logits, labels)
                optimizer.zero_grad(set_to_none=True)
                if not guard.check(loss, rt):  # NaN or inf: skip the step (on every process), keep the schedule
                    scheduler.step()
                    continue
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                # train_acc: the true identity wins even with its margin applied
                meter.add(loss, {'train_acc': (logits.detach().argmax(1) == labels).float().mean()}, len(images))
                bar.set_postfix(meter.postfix(), refresh=False)
        except torch.cuda.OutOfMemoryError:
            runtime.fail(f'CUDA out of memory at --batch-size {args.batch_size}: lower it', 1)
        except RecordIOError as e:  # a corrupt record met while training (a worker's error comes back as one line)
            runtime.fail(f'--data-root: {e}')
        bar.close()
        elapsed = time.perf_counter() - started
        row = {'epoch': epoch, 'lr': lr, **meter.means(rt), 'images_per_s': meter.samples * rt.world_size / elapsed,
               'skipped_steps': guard.skipped}

        # ------------------------------------------------------------ verify, log, save (rank 0)
        if (args.eval_every > 0 and epoch % args.eval_every == 0) or epoch == args.epochs:
            if rt.is_main:
                row.update(verify(model, pairs, bins, args.input, args, rt,
                                  roc_path=out / 'roc.png' if epoch == args.epochs else None))
            rt.barrier()
        row['epoch_time_s'] = time.perf_counter() - started
        log.append(row)
        is_best = best_key in row and (best is None or row[best_key] > best)
        best = row[best_key] if is_best else best
        if rt.is_main:
            checkpoints.save({'model': unwrap(model).state_dict(), 'head': unwrap(head).state_dict(), 'arch': arch,
                              'classes': train_set.classes, 'optimizer': optimizer.state_dict(),
                              'scheduler': scheduler.state_dict(), 'scaler': scaler.state_dict(), 'epoch': epoch,
                              'step': scheduler.last_epoch, 'args': plain_args(args), 'metrics': log.rows,
                              'best': best, 'rng': rng_states()}, epoch, is_best=is_best)
            log.write()
            log.plot(['loss'], ['acc_10fold', 'acc_best_threshold', 'train_acc', *(f'acc_10fold_{b}' for b in bins)])
            rt.print(summary_line(row, args.epochs))
        rt.barrier()

    # ------------------------------------------------------------ results: the last verification
    last = log.rows[-1] if log.rows else {}
    results = {k: v for k, v in last.items() if k in RESULT_KEYS or k.startswith(BIN_KEYS)}
    if rt.is_main:
        write_json(out / 'results.json', results)
        rt.print(f'results: {results} -> {out / "results.json"}')
    rt.close()
    return results


if __name__ == '__main__':
    main(parse_args())
