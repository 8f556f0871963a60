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
Evaluation only (original size; writes OUT/predictions/<event>/<name>.txt and OUT/results.json):
    python train_centernet.py --data-root data/widerface --evaluate --weights runs/centernet/best.pt
Detection on photos with the trained checkpoint:
    python detect.py --weights runs/centernet/best.pt --source photos/
"""
import argparse

from common import face_training, runtime
from common.heatmaps import build_targets
from common.losses import CenterNetLoss
from common.transforms import TrainTransform


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    groups = runtime.add_shared_flags(parser, data_root='data/widerface', out='runs/centernet', epochs=50,
                                      batch_size=24, lr=4e-3, workers=4, eval_every=10, save_every=10)
    g = groups['data']
    g.add_argument('--image-size', type=int, default=800, help='square training input (the tutorial: 800)')
    g = groups['model']
    g.add_argument('--width-mult', type=float, default=1.0, help='MobileNetV2 width multiplier')
    g.add_argument('--neck-channels', type=int, default=24, help='channels of the upsampling neck')
    g.add_argument('--head-conv', type=int, default=24, help='channels of each head\'s 3x3 conv')
    g.add_argument('--down', type=int, default=4, choices=[4, 8], help='output stride of the heatmaps')
    g = groups['optimisation']
    face_training.add_optimisation_flags(g, optimizer='adam', weight_decay=0.0, warmup_epochs=1,
                                         default_steps=(0.7, 0.9))
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
    face_training.add_evaluation_flags(groups['run'])
    return parser.parse_args(argv)


def main(args):
    rt = runtime.setup(args)
    runtime.require_path(args.data_root, '--data-root', 'dataset folder')
    if args.evaluate:  # evaluation only: the network is rebuilt from the checkpoint's arch
        return face_training.evaluate_weights(args, rt)

    # ------------------------------------------------------------ data
    # whole boxes of faces the crop cuts: the size head must learn faces larger than the training input
    train_loader = face_training.train_loader(args, rt, TrainTransform(args.image_size, clip_boxes=False))

    # ------------------------------------------------------------ network
    arch = {'name': 'centerface', 'width_mult': args.width_mult, 'neck_channels': args.neck_channels,
            'head_conv': args.head_conv, 'down': args.down}
    model = face_training.network(args, rt, arch)  # --pretrained loaded, on the device, DDP under torchrun

    # ------------------------------------------------------------ loss and optimiser
    criterion = CenterNetLoss(hm_loss=args.hm_loss, hm_weight=args.hm_weight, off_weight=args.off_weight,
                              wh_weight=args.wh_weight, lm_weight=args.lm_weight)

    def loss_fn(model, images, targets):
        outputs = model(images)
        encoded = build_targets(targets, outputs['hm'].shape[-2:], down=args.down, sigma=args.sigma,
                                reg_min=args.reg_min, pos_min=args.pos_min)
        return criterion(outputs, encoded)

    optimizer, scheduler = face_training.optimizer_and_scheduler(model, args, len(train_loader))

    # ------------------------------------------------------------ train loop, checkpoints, evaluation
    return face_training.fit(args, rt, model=model, arch=arch, train_loader=train_loader, loss_fn=loss_fn,
                             optimizer=optimizer, scheduler=scheduler, loss_keys=['loss', 'hm', 'off', 'wh', 'lm'],
                             grad_clip=args.grad_clip)


if __name__ == '__main__':
    main(parse_args())
