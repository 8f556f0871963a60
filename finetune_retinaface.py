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
    python finetune_retinaface.py --data-root data/widerface --pretrained mobilenet0.25_Final.pth \
        --epochs 10 --warmup-epochs 1
Several GPUs (batch size is per GPU):
    torchrun --nproc_per_node=4 finetune_retinaface.py --data-root data/widerface --batch-size 8
Resume a killed run (same flags plus --resume):
    python finetune_retinaface.py --data-root data/widerface --resume
Evaluation only (original size, or --test-size 1600 --max-size 2150):
    python finetune_retinaface.py --data-root data/widerface --evaluate --weights runs/retinaface/best.pt
"""
import argparse

from common import face_training, runtime
from common.anchors import match, retinaface_priors
from common.losses import MultiBoxLoss


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    groups = runtime.add_shared_flags(parser, data_root='data/widerface', out='runs/retinaface', epochs=250,
                                      batch_size=32, lr=1e-2, workers=4, eval_every=10, save_every=10)
    groups['data'].add_argument('--image-size', type=int, default=640, help='square training crop size')
    groups['model'].add_argument('--network', default='mobile0.25', choices=['mobile0.25', 'resnet50'])
    # SGD with weight decay 5e-4 (Pytorch_Retinaface), 5 warm-up epochs (MindFace), x0.1 at 190 and 220 of 250 epochs
    face_training.add_optimisation_flags(groups['optimisation'], optimizer='sgd', weight_decay=5e-4, warmup_epochs=5,
                                         default_steps=(0.76, 0.88))
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
    model = face_training.network(args, rt, arch)  # --pretrained loaded, on the device, DDP under torchrun

    # ------------------------------------------------------------ loss and optimiser
    priors = retinaface_priors(args.image_size, args.image_size, device=rt.device)
    criterion = MultiBoxLoss(neg_pos_ratio=7)

    def loss_fn(model, images, targets):
        loc, conf, landm = model(images)
        matched = match(priors, targets, image_size=(args.image_size, args.image_size))
        return criterion((loc.float(), conf.float(), landm.float()), matched)

    optimizer, scheduler = face_training.optimizer_and_scheduler(model, args, len(train_loader))

    # ------------------------------------------------------------ train loop, checkpoints, evaluation
    return face_training.fit(args, rt, model=model, arch=arch, train_loader=train_loader, loss_fn=loss_fn,
                             optimizer=optimizer, scheduler=scheduler, loss_keys=['loss', 'loc', 'cls', 'landm'])


if __name__ == '__main__':
    main(parse_args())
