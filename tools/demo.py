"""`make demo`: train and evaluate an mmseg segmentor with a visionattn backbone on the bundled shapes dataset (CPU).

The job of ``configs/demo/upernet_nat_demo_shapes.py``: UperNet on a small NAT (neighborhood attention), trained from
scratch through mmengine's runner (the same path as ``tools/train.py``) on ``demo_data/shapes`` (background, circle,
square, triangle; see ``tools/make_demo_data.py``), evaluated on the held-out split. It prints the IoU per class and
the mIoU (mmseg's IoUMetric) and writes a PNG grid of image / ground truth / prediction.
"""
import argparse
import glob
import os
import os.path as osp
import sys
import time

import numpy as np
from PIL import Image

ROOT = osp.join(osp.dirname(osp.abspath(__file__)), '..')
sys.path.insert(0, ROOT)  # the checkout's package, also when it is not installed

from visionattn.mm.runner import build_runner, load_config  # noqa: E402

CONFIG = osp.join(ROOT, 'configs', 'demo', 'upernet_nat_demo_shapes.py')


def prediction_grid(model, cfg, n: int = 8, scale: int = 2) -> Image.Image:
    """Rows of image | ground truth | prediction for the first ``n`` validation images."""
    from mmseg.apis import inference_model

    model.cfg = cfg
    palette = np.array(cfg.metainfo['palette'], dtype=np.uint8)
    data_root = cfg.val_dataloader.dataset.data_root
    rows = []
    for path in sorted(glob.glob(osp.join(data_root, 'img_dir', 'val', '*.png')))[:n]:
        img = np.array(Image.open(path).convert('RGB'))
        gt = np.array(Image.open(path.replace('img_dir', 'ann_dir')))
        pred = inference_model(model, path).pred_sem_seg.data[0].cpu().numpy()
        gap = np.full((img.shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([img, gap, palette[gt], gap, palette[pred]], 1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    grid = Image.fromarray(np.concatenate(rows[:-1], 0))
    return grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', default=CONFIG)
    parser.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs', 'demo'))
    parser.add_argument('--iters', type=int, help='training iterations (default: the config\'s)')
    args = parser.parse_args(argv)

    options = {'train_dataloader.dataset.data_root': osp.join(ROOT, 'demo_data', 'shapes'),
               'val_dataloader.dataset.data_root': osp.join(ROOT, 'demo_data', 'shapes'),
               'test_dataloader.dataset.data_root': osp.join(ROOT, 'demo_data', 'shapes')}
    if args.iters:
        options.update({'train_cfg.max_iters': args.iters, 'train_cfg.val_interval': args.iters})
    cfg = load_config(args.config, options, work_dir=args.work_dir)
    if args.iters:  # a shorter run: warm-up and decay scaled to it
        warm = min(cfg.param_scheduler[0].end, max(args.iters // 10, 1))
        cfg.param_scheduler[0].end = cfg.param_scheduler[-1].begin = warm
        cfg.param_scheduler[-1].end = args.iters
    t0 = time.time()
    runner = build_runner(cfg)
    runner.train()  # validates (IoU per class) after the last iteration
    train_time = time.time() - t0
    miou = runner.message_hub.get_scalar('val/mIoU').current()
    grid = prediction_grid(runner.model, cfg)
    out = osp.join(args.work_dir, 'demo_predictions.png')
    grid.save(out)
    print(f'\ndemo: {cfg.train_cfg.max_iters} iterations in {train_time / 60:.1f} min, validation mIoU '
          f'{miou:.1f} (predicting background everywhere scores about 21); image | ground truth | '
          f'prediction grid written to {os.path.relpath(out)}')
    return miou


if __name__ == '__main__':
    main()
