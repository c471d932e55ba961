import os
import sys

import numpy as np
from PIL import Image

ROOT = os.path.join(os.path.dirname(__file__), '..', '..')
sys.path.insert(0, os.path.join(ROOT, 'tools'))
import make_demo_data  # noqa: E402
from demo import load_split  # noqa: E402

sys.path.pop(0)
DATA = os.path.join(ROOT, 'demo_data', 'shapes')


def test_bundled_data_is_what_the_generator_makes():
    rng = np.random.default_rng(0)
    for i in range(3):
        img, mask = make_demo_data.make_sample(rng)
        np.testing.assert_array_equal(np.array(img), np.array(Image.open(f'{DATA}/img_dir/train/{i:04d}.png')))
        np.testing.assert_array_equal(np.array(mask), np.array(Image.open(f'{DATA}/ann_dir/train/{i:04d}.png')))


def test_demo_loader_labels_match_masks():
    x, y = load_split(DATA, 'val')
    assert x.shape == (60, 3, 64, 64) and x.min() >= 0 and x.max() <= 1
    assert set(y.tolist()) == {0, 1, 2}
    mask = np.array(Image.open(f'{DATA}/ann_dir/val/0000.png'))
    assert set(np.unique(mask).tolist()) == {0, int(y[0]) + 1}
