"""LITv2 / HiLo: fidelity to the official code, checkpoint layouts, sizes, the deformable convolution.

The fixture tests/fixtures/litv2_model.safetensors was made with the official ziplab/LITv2 code (@ 7501c86) on CPU:
apex's ``float_function`` replaced by the identity and the CUDA ``DCN.deform_conv2d_forward`` by a line-by-line
port of its kernel (``deformable_2d_im2col_gpu_kernel`` + ``dmcn_2d_im2col_bilinear`` + the GEMM), itself checked
against scalar loops over the kernel and against ``torchvision.ops.deform_conv2d`` (max abs diff 0.0 in float64 on
random, integer, border (-1, H) and out-of-map offsets). Contents, every parameter perturbed with seeded noise
(offset convs large enough for fractional and out-of-map samples, random BatchNorm statistics):

- ``state_dict.*``: the official classification state dict (embed_dim 8, depths 1-1-2-1, heads 1-2-4-8, alpha 0.9,
  windows 0-0-2-1, 10 classes), float32;
- ``input`` ``[2, 3, 64, 64]`` through the official classification ``LITv2``: ``logits.*``, ``stage{i}.*`` (NCHW maps
  before each DTM);
- ``input_det`` ``[1, 3, 90, 122]`` through the official mmdet backbone (its per-output norms set to identity) with
  windows 2 and 4: ``det_ws{2,4}.stage{i}.*`` (patch-embed padding, odd maps floored by the DTM, HiLo zero padding
  of 5x7 maps);
- ``det_norm.*``: the same mmdet backbone (window 2) with its random per-output norms ``norm1-3``, float64 maps;
- official det/seg ``HiLo(24, 4 heads, window 3)`` with alpha 0, 0.5, 1 on a 7x5 map: ``hilo_a{alpha}.*``.

Each output is stored as computed by the official code in float64 and in float32.
"""
import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open

import visionattn  # noqa: F401
from visionattn.layers import HiLo
from visionattn.models.litv2 import LITv2, checkpoint_filter_fn, deform_conv2d

FIXTURE = Path(__file__).resolve().parents[1] / 'fixtures' / 'litv2_model.safetensors'


@pytest.fixture(scope='module')
def fx():
    with safe_open(str(FIXTURE), 'pt') as f:
        cfg = json.loads(f.metadata()['config'])
        t = {k: f.get_tensor(k) for k in f.keys()}
    sd = {k[len('state_dict.'):]: v for k, v in t.items() if k.startswith('state_dict.')}
    return cfg, sd, t


def _ours(cfg, sd, dtype, **kwargs):
    model = LITv2(**dict(cfg, **kwargs)).eval()
    model.load_state_dict(checkpoint_filter_fn(sd, model))
    return model.to(dtype)


def _diffs(model, x, t, prefix, suffix, logits=True):
    with torch.no_grad():
        feats = model.forward_intermediates(x, intermediates_only=True)
        out = {f'{prefix}stage{i}': f for i, f in enumerate(feats)}
        if logits:
            out['logits'] = model(x)
    d = {}
    for k, v in out.items():
        ref = t.get(f'{k}.{suffix}')
        if ref is None:
            continue
        assert v.shape == ref.shape, (k, v.shape, ref.shape)
        d[k] = (v.double() - ref.double()).abs().max().item()
    return d


def _own32(t, prefix):
    return max((t[k].double() - t[k[:-len('float32')] + 'float64']).abs().max().item()
               for k in t if k.startswith(prefix) and k.endswith('float32'))


@pytest.mark.parametrize('case', ['cls', 'det_ws2', 'det_ws4'])
def test_official_fidelity(fx, case):
    cfg, sd, t = fx
    if case == 'cls':
        kwargs, x, prefix, keys = {}, t['input'], '', ('logits', 'stage')
    else:
        ws = int(case[-1])
        kwargs, x, prefix, keys = dict(local_ws=(0, 0, ws, 1)), t['input_det'], f'{case}.', (f'{case}.',)
    n_ref = sum(k.startswith(keys) and k.endswith('float64') for k in t)
    d64 = _diffs(_ours(cfg, sd, torch.float64, **kwargs), x.double(), t, prefix, 'float64', logits=case == 'cls')
    assert len(d64) == n_ref and n_ref >= 2
    assert max(d64.values()) <= 1e-10, d64
    d32 = _diffs(_ours(cfg, sd, torch.float32, **kwargs), x.float(), t, prefix, 'float64', logits=case == 'cls')
    own = _own32(t, keys)
    assert max(d32.values()) <= max(2 * own, 1e-6) and max(d32.values()) <= 1e-3, (d32, own)


@pytest.mark.parametrize('alpha', [0.0, 0.5, 1.0])
def test_hilo_layer_fidelity(fx, alpha):
    _, _, t = fx
    name = f'hilo_a{alpha:g}'
    sd = {k[len(name) + len('.state_dict.'):]: v for k, v in t.items() if k.startswith(f'{name}.state_dict.')}
    layer = HiLo(24, num_heads=4, window_size=3, alpha=alpha).eval()
    layer.load_state_dict(sd)
    assert (layer.h_heads, layer.l_heads) == {0.0: (4, 0), 0.5: (2, 2), 1.0: (0, 4)}[alpha]
    x = t[f'{name}.input'].reshape(2, 7, 5, 24)
    ref = t[f'{name}.out.float64']
    with torch.no_grad():
        d64 = (layer.double()(x.double()) - ref).abs().max().item()
        d32 = (layer.float()(x.float()).double() - ref).abs().max().item()
    own = (t[f'{name}.out.float32'].double() - ref).abs().max().item()
    assert d64 <= 1e-6 and d32 <= max(2 * own, 1e-6), (d64, d32, own)


def test_fixture_exercises_offsets_and_hifi(fx):
    # the fixture would not catch a wrong offset or Hi-Fi mapping if those barely moved the outputs
    cfg, sd, t = fx
    x = t['input_det'].double()
    ref = _diffs(_ours(cfg, sd, torch.float64), x, t, 'det_ws2.', 'float64', logits=False)
    assert max(ref.values()) <= 1e-10
    for key in ('layers.0.downsample.dconv.conv_offset.weight', 'layers.2.blocks.0.attn.h_proj.weight',
                'layers.2.blocks.1.attn.l_kv.bias', 'layers.1.downsample.norm_layer.running_var'):
        bad = dict(sd)
        bad[key] = sd[key].flip(0)
        d = _diffs(_ours(cfg, bad, torch.float64), x, t, 'det_ws2.', 'float64', logits=False)
        assert max(d.values()) > 1e-3, key


def test_mmdet_output_norms(fx):
    cfg, sd, t = fx
    ckpt = {'state_dict': {**{'backbone.' + k: v for k, v in sd.items() if not k.startswith(('head', 'norm.'))},
                           **{'backbone.' + k[len('det_norm.'):]: v for k, v in t.items()
                              if k.startswith('det_norm.norm')}}}
    model = LITv2(**dict(cfg, out_norms='mmdet')).eval()
    missing, unexpected = model.load_state_dict(checkpoint_filter_fn(ckpt, model), strict=False)
    assert set(missing) == {'head.weight', 'head.bias', 'norm.weight', 'norm.bias'} and not unexpected
    d = _diffs(model.double(), t['input_det'].double(), t, 'det_norm.', 'float64', logits=False)
    assert len(d) == 3 and max(d.values()) <= 1e-10, d
    # without out_norms the norm{i} weights are dropped
    assert not any(k.startswith('out_norms') for k in checkpoint_filter_fn(ckpt, LITv2(**cfg)))
    assert list(LITv2(**dict(cfg, out_norms='mmseg')).out_norms) == ['0', '1', '2', '3']
    with pytest.raises(ValueError, match='out_norms'):
        LITv2(**dict(cfg, out_norms=(4,)))


def test_checkpoint_layouts(fx):
    cfg, sd, t = fx
    model = LITv2(**cfg).eval().double()
    ref = t['logits.float64']
    mm = {'backbone.' + k: v for k, v in sd.items() if not k.startswith(('head', 'norm.'))}
    mm.update({'backbone.norm1.weight': torch.ones(16), 'backbone.norm0.bias': torch.ones(8), 'neck.w': torch.ones(1)})
    converted = checkpoint_filter_fn(mm, model)
    assert set(model.state_dict()) - set(converted) == {'head.weight', 'head.bias', 'norm.weight', 'norm.bias'}
    training_dict = {'model': sd, 'optimizer': {}, 'epoch': 3, 'max_accuracy': 0.}
    for ckpt in (training_dict, {'module.' + k: v for k, v in sd.items()}):
        model.load_state_dict({k: v.double() if v.is_floating_point() else v
                               for k, v in checkpoint_filter_fn(ckpt, model).items()})
        with torch.no_grad():
            assert (model(t['input'].double()) - ref).abs().max() <= 1e-10


def test_deform_conv2d_low_precision():
    torch.manual_seed(0)
    x, off = torch.randn(2, 4, 6, 8), torch.randn(2, 8, 3, 4)
    w, b = torch.randn(5, 4, 2, 2), torch.randn(5)
    ref = deform_conv2d(x, off, w, b, stride=2)
    out = deform_conv2d(x.bfloat16(), off.bfloat16(), w, b, stride=2)  # mixed dtypes: computed in float32
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)
    # zero offsets: an ordinary convolution
    torch.testing.assert_close(deform_conv2d(x, torch.zeros_like(off), w, b, 2), torch.nn.functional.conv2d(x, w, b, 2))


def test_sizes_and_features():
    model = timm.create_model('litv2_small', features_only=True, pretrained=False).eval()
    assert model.feature_info.channels() == [96, 192, 384, 768]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 90, 122))
        tiny = model(torch.randn(1, 3, 5, 3))
    assert [tuple(f.shape[2:]) for f in feats] == [(23, 31), (11, 15), (5, 7), (2, 3)]
    assert [tuple(f.shape[2:]) for f in tiny] == [(2, 1), (1, 1), (1, 1), (1, 1)]


def test_detection_window_option():
    model = timm.create_model('litv2_small', local_ws=(0, 0, 4, 1))
    attn = model.stages[2].blocks[0].attn
    assert attn.ws == 4 and (attn.h_heads, attn.l_heads) == (2, 10)
    assert model.stages[3].blocks[0].attn.h_heads == 0
    with pytest.raises(ValueError, match='local_ws'):
        LITv2(local_ws=(0, 2, 1))


def test_bad_input():
    model = timm.create_model('litv2_small').eval()
    with pytest.raises(ValueError, match='channels'):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match='3-D'):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match='divisible'):
        HiLo(30, num_heads=4)
