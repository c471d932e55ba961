"""`make demo`: train and evaluate a visionattn backbone end to end on the bundled shapes dataset (CPU, ~2 minutes).

A reduced ConViT (``va_convit_tiny`` with 6 blocks, 4 of them GPSA, patch 8 on 64x64 images) is trained from scratch
to classify the shape in each image of ``demo_data/shapes`` (circle, square, triangle), evaluated on the held-out
split, and a PNG of validation images with predicted and true labels is written.
"""
import argparse
import glob
import os
import time

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

import visionattn

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
CLASSES = ('circle', 'square', 'triangle')


def load_split(root: str, split: str):
    images, labels = [], []
    for path in sorted(glob.glob(os.path.join(root, 'img_dir', split, '*.png'))):
        mask = np.array(Image.open(path.replace('img_dir', 'ann_dir')))
        images.append(np.array(Image.open(path).convert('RGB')))
        labels.append(int(mask.max()) - 1)  # one shape per image: its class index, background excluded
    if not images:
        raise FileNotFoundError(f'no images under {root}/img_dir/{split}; run tools/make_demo_data.py')
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.
    return x, torch.tensor(labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--data', default=os.path.join(ROOT, 'demo_data', 'shapes'))
    parser.add_argument('--model', default='va_convit_tiny')
    parser.add_argument('--epochs', type=int, default=12)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--out', default=os.path.join(ROOT, 'work_dirs', 'demo'))
    args = parser.parse_args()
    torch.manual_seed(0)

    x_train, y_train = load_split(args.data, 'train')
    x_val, y_val = load_split(args.data, 'val')
    mean, std = x_train.mean((0, 2, 3), keepdim=True), x_train.std((0, 2, 3), keepdim=True)
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    print(f'visionattn {visionattn.__version__}: {len(visionattn.list_models())} models registered')
    print(f'data: {len(x_train)} train / {len(x_val)} val images of {tuple(x_train.shape[2:])}, classes {CLASSES}')

    model = timm.create_model(
        args.model, num_classes=len(CLASSES), img_size=64, patch_size=8, depth=6, local_up_to_layer=4,
        drop_path_rate=0.05)
    n_params = sum(p.numel() for p in model.parameters())
    print(f'model: {args.model} (reduced: 6 blocks, 4 GPSA, patch 8), {n_params / 1e6:.2f}M params')
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * ((len(x_train) + args.batch_size - 1) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)

    def evaluate():
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(x_val[i:i + 64]).argmax(1) for i in range(0, len(x_val), 64)])
        return pred, (pred == y_val).float().mean().item()

    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train))
        total = 0.
        for i in range(0, len(x_train), args.batch_size):
            idx = perm[i:i + args.batch_size]
            xb = x_train[idx]
            flip = torch.rand(len(idx)) < 0.5  # shapes keep their class under flips
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = F.cross_entropy(model(xb), y_train[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        _, acc = evaluate()
        print(f'epoch {epoch + 1:2d}/{args.epochs}  train loss {total / len(x_train):.3f}  val acc {acc:.3f}  '
              f'({time.time() - t0:.0f}s)')

    pred, acc = evaluate()
    chance = torch.bincount(y_val).max().item() / len(y_val)
    print(f'final val accuracy {acc:.3f} (majority-class baseline {chance:.3f})')
    os.makedirs(args.out, exist_ok=True)
    tiles = []
    for i in range(min(16, len(x_val))):
        img = Image.fromarray(((x_val[i] * std[0] + mean[0]).clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(
            np.uint8)).resize((128, 128), Image.NEAREST)
        canvas = Image.new('RGB', (128, 150), 'white')
        canvas.paste(img, (0, 0))
        ok = pred[i] == y_val[i]
        ImageDraw.Draw(canvas).text(
            (2, 132), f'{CLASSES[pred[i]]} / {CLASSES[y_val[i]]}', fill=(0, 120, 0) if ok else (200, 0, 0))
        tiles.append(canvas)
    sheet = Image.new('RGB', (128 * 8, 150 * ((len(tiles) + 7) // 8)), 'white')
    for i, t in enumerate(tiles):
        sheet.paste(t, (128 * (i % 8), 150 * (i // 8)))
    path = os.path.join(args.out, 'predictions.png')
    sheet.save(path)
    print(f'wrote {os.path.relpath(path, ROOT)} (predicted / true label under each validation image)')


if __name__ == '__main__':
    main()
