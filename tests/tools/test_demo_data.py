import os
import sys

import numpy as np
import torch
from PIL import Image

ROOT = os.path.join(os.path.dirname(__file__), '..', '..')
sys.path.insert(0, os.path.join(ROOT, 'tools'))
import make_demo_data  # noqa: E402
from demo import iou_per_class, load_split  # noqa: E402

sys.path.pop(0)
DATA = os.path.join(ROOT, 'demo_data', 'shapes')


def test_bundled_data_is_what_the_generator_makes():
    rng = np.random.default_rng(0)
    for i in range(3):
        img, mask = make_demo_data.make_sample(rng)
        np.testing.assert_array_equal(np.array(img), np.array(Image.open(f'{DATA}/img_dir/train/{i:04d}.png')))
        np.testing.assert_array_equal(np.array(mask), np.array(Image.open(f'{DATA}/ann_dir/train/{i:04d}.png')))


def test_demo_loader():
    x, y = load_split(DATA, 'val')
    assert x.shape == (60, 3, 64, 64) and x.min() >= 0 and x.max() <= 1
    assert y.shape == (60, 64, 64) and set(y.unique().tolist()) == {0, 1, 2, 3}
    np.testing.assert_array_equal(y[0].numpy(), np.array(Image.open(f'{DATA}/ann_dir/val/0000.png')))


def test_demo_iou():
    target = torch.tensor([0, 0, 1, 1, 2, 3])
    pred = torch.tensor([0, 1, 1, 1, 2, 2])
    # class 0: 1 / 2, class 1: 2 / 3, class 2: 1 / 2, class 3: 0 / 1
    torch.testing.assert_close(iou_per_class(pred, target, 4), torch.tensor([0.5, 2 / 3, 0.5, 0.0]))
