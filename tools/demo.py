"""`make demo`: train and evaluate a visionattn backbone end to end on the bundled shapes dataset (CPU, minutes).

Semantic segmentation of ``demo_data/shapes`` (background, circle, square, triangle): a reduced ConViT backbone
(``va_convit_tiny`` with patch 8, 6 blocks of width 96, 4 of them GPSA) built with ``features_only=True`` feeds a
light head (the NCHW maps of three blocks, concatenated, a 1x1 conv, bilinear upsampling), trained from scratch with
pixel cross-entropy. It prints the per-class IoU and mIoU on the held-out split and writes a PNG of predictions
beside the ground truth. The OpenMMLab version of this job (mmseg UperNet) replaces it once the mm adapters land.
"""
import argparse
import glob
import os
import sys
import time

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, ROOT)  # the checkout's package, also when it is not installed
import visionattn  # noqa: E402

CLASSES = ('background', 'circle', 'square', 'triangle')
PALETTE = np.array([(0, 0, 0), (220, 60, 60), (60, 180, 75), (60, 100, 230)], dtype=np.uint8)


def load_split(root: str, split: str):
    """Images ``[N, 3, H, W]`` in [0, 1] and masks ``[N, H, W]`` (class index per pixel) of one split."""
    images, masks = [], []
    for path in sorted(glob.glob(os.path.join(root, 'img_dir', split, '*.png'))):
        images.append(np.array(Image.open(path).convert('RGB')))
        masks.append(np.array(Image.open(path.replace('img_dir', 'ann_dir'))))
    if not images:
        raise FileNotFoundError(f'no images under {root}/img_dir/{split}; run tools/make_demo_data.py')
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.
    return x, torch.from_numpy(np.stack(masks)).long()


class Segmenter(nn.Module):
    """A features_only backbone and a light head: concatenated maps, 1x1 conv, bilinear upsampling."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(
            nn.Conv2d(sum(backbone.feature_info.channels()), 128, 1), nn.BatchNorm2d(128), nn.ReLU(),
            nn.Conv2d(128, num_classes, 1))

    def forward(self, x):
        feats = self.backbone(x)
        size = feats[0].shape[-2:]
        y = self.head(torch.cat([F.interpolate(f, size, mode='bilinear') for f in feats], 1))
        return F.interpolate(y, x.shape[-2:], mode='bilinear')


def iou_per_class(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    inter = torch.bincount(target[pred == target], minlength=num_classes).float()
    area_p, area_t = (torch.bincount(t.flatten(), minlength=num_classes).float() for t in (pred, target))
    return inter / (area_p + area_t - inter).clamp(min=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--data', default=os.path.join(ROOT, 'demo_data', 'shapes'))
    parser.add_argument('--model', default='va_convit_tiny')
    parser.add_argument('--epochs', type=int, default=12)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--lr', type=float, default=2e-3)
    parser.add_argument('--out', default=os.path.join(ROOT, 'work_dirs', 'demo'))
    args = parser.parse_args()
    torch.manual_seed(0)

    x_train, y_train = load_split(args.data, 'train')
    x_val, y_val = load_split(args.data, 'val')
    mean, std = x_train.mean((0, 2, 3), keepdim=True), x_train.std((0, 2, 3), keepdim=True)
    print(f'visionattn {visionattn.__version__}: {len(visionattn.list_models())} models registered')
    print(f'data: {len(x_train)} train / {len(x_val)} val images of {tuple(x_train.shape[2:])}, classes {CLASSES}')

    backbone = timm.create_model(
        args.model, features_only=True, out_indices=(1, 3, 5), img_size=64, patch_size=8, embed_dim=96,
        num_heads=4, depth=6, local_up_to_layer=4, drop_path_rate=0.05)
    model = Segmenter(backbone, len(CLASSES))
    n_params = sum(p.numel() for p in model.parameters())
    print(f'model: {args.model} backbone (patch 8, 6 blocks x 96, 4 GPSA; features_only blocks 1/3/5) + 1x1 head, '
          f'{n_params / 1e6:.2f}M params')
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * ((len(x_train) + args.batch_size - 1) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    # the rarer shape pixels weigh more than the background
    weight = 1. / torch.bincount(y_train.flatten(), minlength=len(CLASSES)).float().sqrt()
    weight = weight / weight.mean()

    def evaluate():
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model((x_val[i:i + 32] - mean) / std).argmax(1) for i in range(0, len(x_val), 32)])
        return pred, iou_per_class(pred, y_val, len(CLASSES))

    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train))
        total = 0.
        for i in range(0, len(x_train), args.batch_size):
            idx = perm[i:i + args.batch_size]
            xb, yb = (x_train[idx] - mean) / std, y_train[idx]
            if torch.rand(()) < 0.5:  # flips keep every shape's class
                xb, yb = xb.flip(-1), yb.flip(-1)
            loss = F.cross_entropy(model(xb), yb, weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        _, iou = evaluate()
        print(f'epoch {epoch + 1:2d}/{args.epochs}  train loss {total / len(x_train):.3f}  '
              f'val mIoU {iou.mean().item():.3f}  ({time.time() - t0:.0f}s)', flush=True)

    pred, iou = evaluate()
    print('val IoU: ' + ', '.join(f'{c} {v:.3f}' for c, v in zip(CLASSES, iou.tolist())))
    baseline = iou_per_class(torch.zeros_like(y_val), y_val, len(CLASSES)).mean().item()
    print(f'val mIoU {iou.mean().item():.3f} (all-background baseline {baseline:.3f})')
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for i in range(min(8, len(x_val))):
        img = (x_val[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        rows.append(np.concatenate([img, PALETTE[y_val[i].numpy()], PALETTE[pred[i].numpy()]], 1))
    sheet = Image.fromarray(np.concatenate(rows, 0)).resize((3 * 64 * 3, len(rows) * 64 * 3), Image.NEAREST)
    path = os.path.join(args.out, 'predictions.png')
    sheet.save(path)
    print(f'wrote {os.path.relpath(path, ROOT)} (columns: image, ground truth, prediction)')


if __name__ == '__main__':
    main()
