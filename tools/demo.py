"""`make demo`: train and evaluate an mmseg segmentor with a visionattn backbone on the bundled shapes dataset (CPU).

The job of ``configs/demo/upernet_nat_demo_shapes.py``: UperNet on a small NAT (neighborhood attention), trained from
scratch through mmengine's runner (the same path as ``tools/train.py``) on ``demo_data/shapes`` (background, circle,
square, triangle; see ``tools/make_demo_data.py``), evaluated on the held-out split. It prints the IoU per class and
the mIoU (mmseg's IoUMetric) and writes a PNG grid of image / ground truth / prediction. Seeded and with mmengine's
deterministic settings (``randomness = dict(seed=0, deterministic=True)`` in the config), a run gives the same number
for the same thread count. At the end it times the backbone's attention at the demo's resolution, the point of the
library: the neighborhood attention op of every NAT layer (the model's backend) against dense SDPA over all the tokens
on the same q/k/v shapes, measured in that run.
"""
import argparse
import glob
import os
import os.path as osp
import sys
import time
from functools import partial

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


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up (and the C kernels' first-use compile)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def attention_timing(model, input_hw, batch: int = 1, repeats: int = 7) -> dict:
    """Attention time of the backbone's neighborhood attention layers at ``input_hw`` against dense attention.

    A forward at ``input_hw`` records the q/k/v shape of every ``NeighborhoodAttention2d`` (from its qkv projection);
    then, per layer, ``visionattn.ops.neighborhood_attention`` with the layer's kernel, dilation, bias and backend and
    ``F.scaled_dot_product_attention`` over all ``H * W`` tokens on random q/k/v of that shape are timed (medians of
    ``repeats``, summed over the layers). Returns the layer count, the two totals in ms and their ratio.
    """
    import torch
    import torch.nn.functional as F

    from visionattn.layers.neighborhood import NeighborhoodAttention2d
    from visionattn.ops import neighborhood_attention

    layers = [m for m in model.modules() if isinstance(m, NeighborhoodAttention2d)]
    if not layers:
        raise ValueError(f'{type(model).__name__} has no NeighborhoodAttention2d layer to time')
    shapes, handles = {}, []
    def record(layer, module, args, out):
        shapes.setdefault(layer, tuple(out.shape))  # returns None: the output is left alone

    for m in layers:
        handles.append(m.qkv.register_forward_hook(partial(record, m)))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        x = torch.zeros(batch, 3, *input_hw)
        model.extract_feat(x) if hasattr(model, 'extract_feat') else model(x)
    model.train(was_training)
    for h in handles:
        h.remove()
    ours = dense = 0.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in layers:
            b, h, w, _ = shapes[m]
            q, k, v = (torch.randn(b, h, w, m.num_heads, m.head_dim, generator=g) for _ in range(3))
            qd, kd, vd = (t.reshape(b, h * w, m.num_heads, m.head_dim).transpose(1, 2) for t in (q, k, v))
            ours += _median_ms(partial(
                neighborhood_attention, q, k, v, m.kernel_size, m.stride, m.dilation, m.is_causal, m.rpb, m.scale,
                backend=m.backend), repeats)
            dense += _median_ms(partial(F.scaled_dot_product_attention, qd, kd, vd, scale=m.scale), repeats)
    return dict(layers=len(layers), ms=ours, dense_ms=dense, ratio=ours / dense)


def warm_up_kernels(kernel_size: int = 5) -> None:
    """Build or load the C kernels (the first run compiles them, a minute or two) before the training clock starts."""
    import torch

    from visionattn.ops import neighborhood_attention

    q, k, v = (torch.randn(2, 8, 8, 2, 16, requires_grad=True) for _ in range(3))
    rpb = torch.zeros(2, 2 * kernel_size - 1, 2 * kernel_size - 1, requires_grad=True)
    neighborhood_attention(q, k, v, kernel_size, rpb=rpb).sum().backward()


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', default=CONFIG)
    parser.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs', 'demo'))
    parser.add_argument('--iters', type=int, help='training iterations (default: the config\'s)')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override config entries (experiments), e.g. optim_wrapper.optimizer.lr=2e-3')
    args = parser.parse_args(argv)

    options = {'train_dataloader.dataset.data_root': osp.join(ROOT, 'demo_data', 'shapes'),
               'val_dataloader.dataset.data_root': osp.join(ROOT, 'demo_data', 'shapes'),
               'test_dataloader.dataset.data_root': osp.join(ROOT, 'demo_data', 'shapes')}
    if args.cfg_options:
        from mmengine.config import DictAction
        options.update({k: DictAction._parse_iterable(v) for k, v in (o.split('=', 1) for o in args.cfg_options)})
    if args.iters:
        options.update({'train_cfg.max_iters': args.iters, 'train_cfg.val_interval': args.iters})
    cfg = load_config(args.config, options, work_dir=args.work_dir)
    if args.iters:  # a shorter run: warm-up and decay scaled to it
        warm = min(cfg.param_scheduler[0].end, max(args.iters // 10, 1))
        cfg.param_scheduler[0].end = cfg.param_scheduler[-1].begin = warm
        cfg.param_scheduler[-1].end = args.iters
    warm_up_kernels(cfg.model.backbone.get('kernel_size', 5))
    t0 = time.time()
    runner = build_runner(cfg)
    runner.train()  # validates (IoU per class) after the last iteration
    train_time = time.time() - t0
    miou = runner.message_hub.get_scalar('val/mIoU').current()
    grid = prediction_grid(runner.model, cfg)
    out = osp.join(args.work_dir, 'demo_predictions.png')
    grid.save(out)
    import torch
    hw = tuple(cfg.model.data_preprocessor.size)
    t = attention_timing(runner.model, hw)
    print(f'\nattention of the backbone ({t["layers"]} neighborhood attention layers, {hw[0]}x{hw[1]} input, batch 1, '
          f'{torch.get_num_threads()} threads, measured now): {t["ms"]:.2f} ms with the model\'s backend against '
          f'{t["dense_ms"]:.2f} ms for dense SDPA over all tokens on the same q/k/v shapes ({t["ratio"]:.2f}x)')
    print(f'\ndemo: {cfg.train_cfg.max_iters} iterations in {train_time / 60:.1f} min, validation mIoU '
          f'{miou:.1f} (predicting background everywhere scores about 20); image | ground truth | '
          f'prediction grid written to {os.path.relpath(out)}')
    return miou


if __name__ == '__main__':
    main()
