"""Generate the bundled demo dataset ``demo_data/shapes`` (deterministic; the output is committed).

Each 64x64 RGB image shows one shape (circle, axis-aligned square, or triangle pointing up or down) of random size
(radius 22-36% of the image), position (wholly inside) and colour (contrasting with the background) on a textured
background; its annotation PNG holds the class index per pixel (0 background, 1 circle, 2 square,
3 triangle). Layout follows mmseg's custom datasets: ``img_dir/{train,val}/*.png``, ``ann_dir/{train,val}/*.png``;
``annotations/instances_{train,val}.json`` hold the same shapes as COCO instances (one per image, its mask as
uncompressed RLE) for the mmdet configs.
"""
import argparse
import json
import os

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ('background', 'circle', 'square', 'triangle')
PALETTE = ((0, 0, 0), (220, 60, 60), (60, 180, 75), (60, 100, 230))


def make_sample(rng: np.random.Generator, size: int = 64):
    yy, xx = np.mgrid[:size, :size] / size
    freq, phase = rng.uniform(2, 8, 2), rng.uniform(0, 2 * np.pi, 2)
    base = rng.uniform(60, 190, 3)
    texture = np.sin(2 * np.pi * freq[0] * xx + phase[0]) * np.cos(2 * np.pi * freq[1] * yy + phase[1])
    img = base[None, None] + 35 * texture[..., None] + rng.normal(0, 12, (size, size, 3))
    img = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    mask = Image.new('L', (size, size), 0)
    cls = int(rng.integers(1, len(CLASSES)))
    # large enough for the corners to span a few tokens after a stride-4 stem, wholly inside the image
    r = rng.uniform(0.22, 0.36) * size
    cx, cy = rng.uniform(r + 1, size - r - 1, 2)
    color = rng.integers(0, 256, 3)
    while np.abs(color - base).mean() < 60:  # contrast with the background: the shape, not its colour, is the task
        color = rng.integers(0, 256, 3)
    color = tuple(int(c) for c in color)
    if cls == 1:
        box = [cx - r, cy - r, cx + r, cy + r]
        shapes = [('ellipse', box)]
    elif cls == 2:
        a = np.pi / 4  # axis-aligned: edges along the rows and columns (the triangle's slope by 30 degrees)
        pts = [(cx + r * np.cos(a + k * np.pi / 2), cy + r * np.sin(a + k * np.pi / 2)) for k in range(4)]
        shapes = [('polygon', pts)]
    else:
        a = -np.pi / 2 + np.pi * rng.integers(0, 2)  # upright or upside down (with the flips: also on its side)
        pts = [(cx + r * np.cos(a + k * 2 * np.pi / 3), cy + r * np.sin(a + k * 2 * np.pi / 3)) for k in range(3)]
        shapes = [('polygon', pts)]
    for draw, fill in ((ImageDraw.Draw(img), color), (ImageDraw.Draw(mask), cls)):
        for kind, geom in shapes:
            getattr(draw, kind)(geom, fill=fill)
    return img, mask


def coco_instances(mask_dir: str, image_prefix: str) -> dict:
    """COCO instance annotations of the shapes: one object per image, bbox and RLE mask from the annotation PNG."""
    images, annotations = [], []
    for i, name in enumerate(sorted(os.listdir(mask_dir))):
        mask = np.array(Image.open(os.path.join(mask_dir, name)))
        cls = int(mask.max())
        images.append(dict(id=i, file_name=f'{image_prefix}/{name}', height=mask.shape[0], width=mask.shape[1]))
        if cls == 0:
            continue
        ys, xs = np.nonzero(mask)
        x0, y0 = int(xs.min()), int(ys.min())
        # uncompressed RLE: run lengths over the column-major mask, starting with a (possibly empty) run of zeros
        flat = (mask == cls).flatten(order='F').astype(np.int8)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
        counts = np.diff(np.concatenate([[0], edges])).tolist()
        annotations.append(dict(
            id=len(annotations) + 1, image_id=i, category_id=cls, iscrowd=0, area=int(flat.sum()),
            bbox=[x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
            segmentation=dict(counts=counts, size=list(mask.shape))))
    categories = [dict(id=i, name=name) for i, name in enumerate(CLASSES) if i]
    return dict(images=images, annotations=annotations, categories=categories)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), '..', 'demo_data', 'shapes'))
    parser.add_argument('--train', type=int, default=480)
    parser.add_argument('--val', type=int, default=60)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for split, n in (('train', args.train), ('val', args.val)):
        for sub in ('img_dir', 'ann_dir'):
            os.makedirs(os.path.join(args.out, sub, split), exist_ok=True)
        for i in range(n):
            img, mask = make_sample(rng)
            img.save(os.path.join(args.out, 'img_dir', split, f'{i:04d}.png'))
            mask.save(os.path.join(args.out, 'ann_dir', split, f'{i:04d}.png'))
        os.makedirs(os.path.join(args.out, 'annotations'), exist_ok=True)
        with open(os.path.join(args.out, 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump(coco_instances(os.path.join(args.out, 'ann_dir', split), split), f, separators=(',', ':'))
    print(f'wrote {args.train} train and {args.val} val samples to {os.path.abspath(args.out)}')


if __name__ == '__main__':
    main()
