"""The bundled demo data (as the generator makes it, COCO annotations included) and `make demo`'s script."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from tools import make_demo_data

ROOT = os.path.join(os.path.dirname(__file__), '..', '..')

DATA = os.path.join(ROOT, 'demo_data', 'shapes')


def test_bundled_data_is_what_the_generator_makes():
    rng = np.random.default_rng(0)
    for i in range(3):
        img, mask = make_demo_data.make_sample(rng)
        np.testing.assert_array_equal(np.array(img), np.array(Image.open(f'{DATA}/img_dir/train/{i:04d}.png')))
        np.testing.assert_array_equal(np.array(mask), np.array(Image.open(f'{DATA}/ann_dir/train/{i:04d}.png')))


@pytest.mark.parametrize('split', ['train', 'val'])
def test_coco_annotations_match_the_masks(split):
    with open(f'{DATA}/annotations/instances_{split}.json') as f:
        bundled = json.load(f)
    assert bundled == make_demo_data.coco_instances(f'{DATA}/ann_dir/{split}', split)
    ann = bundled['annotations'][0]
    mask = np.array(Image.open(f"{DATA}/ann_dir/{bundled['images'][ann['image_id']]['file_name']}"))
    # decode the uncompressed RLE (column-major runs, zeros first) back into the mask
    flat = np.repeat(np.arange(len(ann['segmentation']['counts'])) % 2, ann['segmentation']['counts'])
    np.testing.assert_array_equal(flat.reshape(mask.shape[::-1]).T, mask == ann['category_id'])
    x, y, w, h = ann['bbox']
    assert (mask[y:y + h, x:x + w] == ann['category_id']).sum() == ann['area'] == (mask == ann['category_id']).sum()


@pytest.mark.mm
def test_demo_runs_end_to_end(tmp_path):
    pytest.importorskip('mmseg')
    from tools import demo
    miou = demo.main(['--iters', '2', '--work-dir', str(tmp_path)])
    assert 0 <= miou <= 100
    assert Image.open(tmp_path / 'demo_predictions.png').size[0] > 3 * 64
