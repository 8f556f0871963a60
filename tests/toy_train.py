"""A toy training script on the shared engine (linear regression on random data): the engine, resume and DDP tests
run it as a subprocess exactly the way users run the real scripts.

    python tests/toy_train.py --out DIR --epochs 4 [--resume] [--nan-at-step K]
    torchrun --nproc_per_node=2 tests/toy_train.py --out DIR --device cpu
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import engine, runtime  # noqa: E402


class ToyData(torch.utils.data.Dataset):
    def __init__(self, n=64):
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ torch.arange(8.0) + 0.5

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def main():
    parser = argparse.ArgumentParser()
    runtime.add_shared_flags(parser, data_root='', out='runs/toy', epochs=4, batch_size=8, lr=0.05, workers=0)
    parser.add_argument('--nan-at-step', type=int, default=-1, help='make the loss NaN from this step on')
    parser.add_argument('--sleep-per-step', type=float, default=0.0, help='slow down, so a test can kill mid-run')
    args = parser.parse_args()
    rt = runtime.setup(args)
    model = rt.wrap(torch.nn.Linear(8, 1))
    loader = engine.make_loader(ToyData(), batch_size=args.batch_size, rt=rt, train=True, workers=args.workers,
                                seed=args.seed)
    optimizer = engine.build_optimizer(model, 'sgd', args.lr, weight_decay=0.0)
    scheduler = engine.build_scheduler(optimizer, iters_per_epoch=len(loader), epochs=args.epochs, warmup_epochs=1,
                                       schedule='cosine')
    steps = {'n': 0}

    def loss_fn(model, x, y):
        loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y)
        steps['n'] += 1
        time.sleep(args.sleep_per_step)
        if 0 <= args.nan_at_step <= steps['n']:
            loss = loss * float('nan')
        return loss, {}

    def evaluate(model, epoch):
        data = ToyData()
        with torch.no_grad():
            prediction = model(data.x.to(rt.device)).squeeze(1).cpu()
            return {'val_mse': torch.nn.functional.mse_loss(prediction, data.y).item()}

    final = engine.fit(rt=rt, model=model, train_loader=loader, loss_fn=loss_fn, optimizer=optimizer,
                       scheduler=scheduler, scaler=rt.grad_scaler(), arch={'name': 'toy'}, args=args,
                       evaluate=evaluate, best_key=None, loss_keys=['loss'], metric_keys=['val_mse'])
    if rt.is_main:
        engine.write_json(Path(args.out) / 'results.json', {'val_mse': final['val_mse']})
    rt.print(f'rank-0 world_size={rt.world_size}')
    rt.close()


if __name__ == '__main__':
    main()
