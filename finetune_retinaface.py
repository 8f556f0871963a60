"""RetinaFace on WIDER FACE: train from an ImageNet backbone or finetune a trained model, with five landmarks, and
report the official WIDER FACE Easy / Medium / Hard AP.

The recipe is Pytorch_Retinaface's (SGD, momentum 0.9, weight decay 5e-4, 640 px crops, matching at IoU 0.35,
7:1 hard negatives, loss = 2 loc + cls + landmarks) with the MindFace finetune tutorial's warm-up.
`--data-root` holds train/, val/ (label.txt + images/) and ground_truth/ (the official .mat files); build it from
the official download with `python -m common.datasets prepare-widerface`, or make a synthetic one with
`python -m common.synthetic widerface --out data/synth`.

Single device:
    python finetune_retinaface.py --data-root data/widerface --pretrained weights/mobilenetV1X0.25_pretrain.tar
Finetune a trained Pytorch_Retinaface model for 10 epochs:
    python finetune_retinaface.py --data-root data/widerface --pretrained mobilenet0.25_Final.pth --epochs 10 --warmup-epochs 1
Several GPUs (batch size is per GPU):
    torchrun --nproc_per_node=4 finetune_retinaface.py --data-root data/widerface --batch-size 8
Resume a killed run (same flags plus --resume):
    python finetune_retinaface.py --data-root data/widerface --resume
Evaluation only (original size, or --test-size 1600 --max-size 2150):
    python finetune_retinaface.py --data-root data/widerface --evaluate --weights runs/retinaface/best.pt
"""
import argparse

from common import engine, face_training, runtime
from common.anchors import match, retinaface_priors
from common.checkpoint import CheckpointError
from common.losses import MultiBoxLoss
from common.models import build_model, load_pretrained


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    groups = runtime.add_shared_flags(parser, data_root='data/widerface', out='runs/retinaface', epochs=250,
                                      batch_size=32, lr=1e-2, workers=4, eval_every=10, save_every=10)
    groups['data'].add_argument('--image-size', type=int, default=640, help='square training crop size')
    groups['model'].add_argument('--network', default='mobile0.25', choices=['mobile0.25', 'resnet50'])
    g = groups['optimisation']
    g.add_argument('--optimizer', default='sgd', choices=['sgd', 'adam', 'adamw'])
    g.add_argument('--momentum', type=float, default=0.9)
    g.add_argument('--weight-decay', type=float, default=5e-4)
    g.add_argument('--warmup-epochs', type=float, default=5, help='linear LR warm-up (MindFace: 5)')
    g.add_argument('--lr-steps', type=float, nargs='*', default=None,
                   help='epochs where the LR drops x0.1 (default: 76%% and 88%% of --epochs, i.e. 190 and 220 of 250)')
    g.add_argument('--schedule', default='step', choices=['step', 'cosine'])
    face_training.add_evaluation_flags(groups['run'])
    return parser.parse_args(argv)


def main(args):
    rt = runtime.setup(args)
    runtime.require_path(args.data_root, '--data-root', 'dataset folder')
    if args.evaluate:  # evaluation only: --weights is ours, or a Pytorch_Retinaface state dict of --network
        return face_training.evaluate_weights(args, rt, network=args.network)

    # ------------------------------------------------------------ data
    train_loader = face_training.train_loader(args, rt)

    # ------------------------------------------------------------ network
    arch = {'name': 'retinaface', 'network': args.network}
    model = build_model(arch)
    if args.pretrained and not args.resume:
        try:
            rt.print(load_pretrained(model, runtime.require_path(args.pretrained, '--pretrained', 'weights file')))
        except CheckpointError as e:
            runtime.fail(f'--pretrained: {e}')
    model = rt.wrap(model)

    # ------------------------------------------------------------ loss and optimiser
    priors = retinaface_priors(args.image_size, args.image_size, device=rt.device)
    criterion = MultiBoxLoss(neg_pos_ratio=7)

    def loss_fn(model, images, targets):
        loc, conf, landm = model(images)
        matched = match(priors, targets, image_size=(args.image_size, args.image_size))
        return criterion((loc.float(), conf.float(), landm.float()), matched)

    optimizer = engine.build_optimizer(model, args.optimizer, args.lr, args.momentum, args.weight_decay)
    lr_steps = args.lr_steps if args.lr_steps is not None else [round(args.epochs * 0.76), round(args.epochs * 0.88)]
    scheduler = engine.build_scheduler(optimizer, iters_per_epoch=len(train_loader), epochs=args.epochs,
                                       warmup_epochs=args.warmup_epochs, schedule=args.schedule,
                                       milestones=lr_steps, gamma=0.1, per='epoch')

    # ------------------------------------------------------------ train loop, checkpoints, evaluation
    final = engine.fit(rt=rt, model=model, train_loader=train_loader, loss_fn=loss_fn, optimizer=optimizer,
                       scheduler=scheduler, scaler=rt.grad_scaler(), arch=arch, args=args,
                       evaluate=face_training.val_evaluator(args, rt, arch), best_key='easy',
                       loss_keys=['loss', 'loc', 'cls', 'landm'], metric_keys=['easy', 'medium', 'hard'])
    return face_training.finish(args, rt, final)


if __name__ == '__main__':
    main(parse_args())
