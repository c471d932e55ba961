"""tools/convert_checkpoint.py: official training dicts and mm segmentor checkpoints to safetensors with metadata."""
import argparse
import json
import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import visionattn  # noqa: F401

ROOT = os.path.join(os.path.dirname(__file__), '..', '..')
TOOL = os.path.join(ROOT, 'tools', 'convert_checkpoint.py')


def _run(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))


def test_official_training_dict_with_verify(tmp_path):
    torch.manual_seed(0)
    src_model = timm.create_model('evit_deit_tiny_patch16_224', keep_rate=0.7).eval()
    src = tmp_path / 'evit.pth'
    torch.save({'model': src_model.state_dict(), 'args': argparse.Namespace(keep_rate=0.7), 'epoch': 299}, src)
    dst = tmp_path / 'evit.safetensors'
    r = _run(str(src), str(dst), '--model', 'evit_deit_tiny_patch16_224', '--model-kwargs', 'keep_rate=0.7',
             '--verify')
    assert r.returncode == 0, r.stderr
    assert 'verify: shape=[1, 1000]' in r.stdout
    with safe_open(str(dst), 'pt') as f:
        meta = f.metadata()
    assert meta['model'] == 'evit_deit_tiny_patch16_224' and json.loads(meta['model_kwargs']) == {'keep_rate': 0.7}
    assert meta['license'] and len(meta['source_sha256']) == 64
    model = timm.create_model('evit_deit_tiny_patch16_224', **json.loads(meta['model_kwargs'])).eval()
    model.load_state_dict(load_file(str(dst)))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src_model(x))


def test_mm_segmentor_checkpoint_and_mismatch(tmp_path):
    torch.manual_seed(0)
    ref = timm.create_model('nat_mini')
    src = tmp_path / 'upernet.pth'
    sd = {f'backbone.model.{k}': v for k, v in ref.state_dict().items() if not k.startswith(('head', 'norm.'))}
    sd['decode_head.conv_seg.weight'] = torch.zeros(4, 8, 1, 1)
    torch.save({'meta': {'iter': 160000}, 'state_dict': sd}, src)
    dst = tmp_path / 'nat.safetensors'
    r = _run(str(src), str(dst), '--model', 'nat_mini')
    assert r.returncode == 0, r.stderr
    out = load_file(str(dst))
    torch.testing.assert_close(out['stages.0.blocks.0.attn.qkv.weight'], ref.stages[0].blocks[0].attn.qkv.weight)
    r = _run(str(src), str(tmp_path / 'x.safetensors'), '--model', 'nat_tiny')  # wrong variant: a clear error
    assert r.returncode != 0 and 'does not match nat_tiny' in r.stderr + r.stdout


@pytest.mark.parametrize('bad', ['unknown', 'evil'])
def test_refuses(tmp_path, bad):
    src = tmp_path / 'w.pth'
    if bad == 'evil':
        class Evil:
            def __reduce__(self):
                return (os.system, ('true',))
        torch.save({'model': {}, 'x': Evil()}, src)
        r = _run(str(src), str(tmp_path / 'o.safetensors'), '--model', 'nat_mini')
        assert r.returncode != 0 and 'refused to load' in r.stderr
    else:
        torch.save({}, src)
        r = _run(str(src), str(tmp_path / 'o.safetensors'), '--model', 'resnet50')
        assert r.returncode != 0 and 'unknown visionattn model' in r.stderr
