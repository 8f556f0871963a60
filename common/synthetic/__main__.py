"""`python -m common.synthetic KIND --out DIR ...` writes a synthetic dataset (the kinds: common/synthetic/__init__.py).
"""
import argparse
import sys
from pathlib import Path

from ..evaluation.lfw import PairsFormatError
from . import KINDS, identities, widerface


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m common.synthetic',
                                     description='write a synthetic dataset in a real on-disk format')
    commands = parser.add_subparsers(dest='command', required=True)
    for kind, make in KINDS.items():
        sub = commands.add_parser(kind, help=(make.__doc__ or '').split('\n')[0])
        sub.add_argument('--out', required=True, help='output folder')
        if kind == 'identities':  # sized in people and pictures per person
            identities.add_flags(sub)
        else:
            sub.add_argument('--num-images', type=int, default=600, help='number of (train) images')
        sub.add_argument('--seed', type=int, default=0, help='same seed, same bytes')
    sheet = commands.add_parser('contact-sheet', help='PNG grid of a synthetic widerface set with its labels, or of '
                                'an identities set (a row per person)')
    sheet.add_argument('--data', required=True, help='folder written by the widerface or the identities kind')
    sheet.add_argument('--out', required=True, help='PNG path, e.g. docs/synthetic_widerface.png')
    baseline = commands.add_parser('colour-baseline', help='LFW 10-fold accuracy of colour histograms on the test/ '
                                   'people of an identities set (what colour alone tells apart)')
    baseline.add_argument('--data', required=True, help='folder written by the identities kind')
    baseline.add_argument('--pairs', default='pairs.txt', help='pair list inside --data')
    args = parser.parse_args(argv)
    if args.command == 'contact-sheet':
        data = Path(args.data)
        if (data / 'train' / 'label.txt').is_file():
            print(f'wrote {widerface.contact_sheet(data, args.out)}')
        elif (data / 'train').is_dir() and (data / 'test').is_dir():
            print(f'wrote {identities.contact_sheet(data, args.out)}')
        else:
            print(f'error: --data {data}: neither a widerface set (train/label.txt) nor an identities set (train/ and '
                  f'test/ folders of people)', file=sys.stderr)
            return 2
        return 0
    if args.command == 'colour-baseline':
        try:
            print('\n'.join(identities.colour_baseline(args.data, args.pairs)))
        except (FileNotFoundError, PairsFormatError) as e:
            print(f'error: --data: {e}', file=sys.stderr)
            return 2
        return 0
    if args.command == 'identities':
        out = identities.make_identities(args.out, seed=args.seed, **identities.sizes_from(args))
        print(f'wrote {out}')
        return 0
    if args.num_images < 1:
        print(f'error: --num-images must be at least 1, got {args.num_images}', file=sys.stderr)
        return 2
    print(f'wrote {KINDS[args.command](args.out, args.num_images, args.seed)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
