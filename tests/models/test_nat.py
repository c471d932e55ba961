"""NAT / DiNAT / DiNAT_s: fidelity to the official code, checkpoint layouts, dilation schedules, small maps.

The fixtures tests/fixtures/nat_*.safetensors were made with the official SHI-Labs classification code (nat.py,
dinats.py @ d334f5b) run with a natten-0.14-style NeighborhoodAttention2D (pad-to-window, fused qkv, rpb indexed by
natten 0.14's get_window_start/get_pb_start), reduced-width configs taking every code path (conv and patch stems,
layer scale on and off, kernels 3 and 5, dilations up to 6, padded small maps, odd patch merging, non-square input),
every parameter perturbed with seeded noise. Each holds the official float32 state dict, the input, and the official
logits and stage maps (NCHW, before each downsampler) computed in float64 and in float32.

tests/fixtures/nat_isotropic*.safetensors: the official isotropic NAT/DiNAT (classification/isotropic.py @ d334f5b) run
with a NATTEN 0.14.6 stand-in (NeighborhoodAttention2D with natten 0.14's window/rpb start rules and pad-and-crop),
checked first to reproduce the NAT fixtures above exactly; 8x8 maps (patch 8), kernel 3 with dilation 2 and kernel 5
with dilation 2 (padded to 10x10), non-square inputs that the official patch embedding pads to 64x64, every parameter
perturbed; logits and every block's map (NCHW) in float64 and float32.
"""
import functools
import json
import random
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors import safe_open

from visionattn.layers import NeighborhoodAttention2d
from visionattn.models.nat import (
    NAT,
    NAT_DILATIONS,
    NATIsotropic,
    checkpoint_filter_fn,
    resolve_dilations,
    resolve_strides,
)

FIXTURES = Path(__file__).resolve().parents[1] / 'fixtures'
NAMES = ('nat_conv_ls', 'nat_conv', 'nat_patch')


def _load(name):
    with safe_open(str(FIXTURES / f'{name}.safetensors'), 'pt') as f:
        cfg = json.loads(f.metadata()['config'])
        t = {k: f.get_tensor(k) for k in f.keys()}
    sd = {k[len('state_dict.'):]: v for k, v in t.items() if k.startswith('state_dict.')}
    return cfg, sd, t


def _ours(cfg, sd, dtype):
    model = NAT(**cfg).eval().to(dtype)
    model.load_state_dict(checkpoint_filter_fn({k: v.to(dtype) for k, v in sd.items()}, model))
    return model


def _run(model, x):
    with torch.no_grad():
        return model(x), model.forward_intermediates(x, intermediates_only=True)


def _max_diff(model, t, x, suffix):
    logits, stages = _run(model, x)
    diffs = [(logits.double() - t[f'logits.{suffix}'].double()).abs().max().item()]
    diffs += [(s.double() - t[f'stage{i}.{suffix}'].double()).abs().max().item() for i, s in enumerate(stages)]
    assert len(stages) == sum(k.startswith('stage') and k.endswith('float64') for k in t)
    return max(diffs)


@pytest.mark.parametrize('name', NAMES)
def test_official_fidelity(name):
    cfg, sd, t = _load(name)
    x = t['input']
    d64 = _max_diff(_ours(cfg, sd, torch.float64), t, x.double(), 'float64')
    assert d64 <= 1e-10, f'float64 max abs diff {d64}'
    model32 = _ours(cfg, sd, torch.float32)
    d32 = _max_diff(model32, t, x.float(), 'float64')
    # the official model's own float32 rounding, the bar of DESIGN.md's fidelity protocol
    own32 = max((t['logits.float32'].double() - t['logits.float64']).abs().max().item(), *[
        (t[f'stage{i}.float32'].double() - t[f'stage{i}.float64']).abs().max().item() for i in range(4)])
    assert d32 <= max(1e-4, 2 * own32) and d32 <= 1e-4, f'float32 max abs diff {d32} (official own {own32})'


def test_fixture_exercises_rpb_and_layer_scale():
    # the fixtures would not catch a wrong rpb/layer-scale mapping if those barely moved the outputs
    cfg, sd, t = _load('nat_conv_ls')
    x = t['input'].double()
    ref = _run(_ours(cfg, sd, torch.float64), x)[1]
    for key in ('levels.0.blocks.1.attn.rpb', 'levels.2.blocks.0.gamma1'):
        bad = dict(sd)
        bad[key] = sd[key].flip(-1)
        out = _run(_ours(cfg, bad, torch.float64), x)[1]
        assert max((a - b).abs().max() for a, b in zip(out, ref)) > 1e-3, key


def _to_hf(sd, prefix='dinat.'):
    """The Hugging Face transformers Nat/Dinat layout (modeling_dinat.py key names) of an official state dict."""
    out = {}
    for k, v in sd.items():
        p = k.split('.')
        if p[0] == 'patch_embed':
            k = k.replace('patch_embed.proj.', 'embeddings.patch_embeddings.projection.').replace(
                'patch_embed.norm.', 'embeddings.norm.')
        elif p[0] == 'levels' and p[2] == 'downsample':
            k = 'encoder.' + k
        elif p[0] == 'levels':
            base = f'encoder.levels.{p[1]}.layers.{p[3]}.'
            name = '.'.join(p[4:])
            if name == 'attn.qkv.weight' or name == 'attn.qkv.bias':
                for part, t in zip(('query', 'key', 'value'), v.chunk(3, dim=0)):
                    out[prefix + base + f'attention.self.{part}.{p[-1]}'] = t
                continue
            if name in ('gamma1', 'gamma2'):
                continue
            for a, b in (('norm1.', 'layernorm_before.'), ('norm2.', 'layernorm_after.'),
                         ('attn.rpb', 'attention.self.rpb'), ('attn.proj.', 'attention.output.dense.'),
                         ('mlp.fc1.', 'intermediate.dense.'),
                         ('mlp.fc2.', 'output.dense.')):
                if name.startswith(a):
                    name = b + name[len(a):]
                    break
            k = base + name
        elif p[0] == 'norm':
            k = 'layernorm.' + p[1]
        elif p[0] == 'head':
            out['classifier.' + p[1]] = v
            continue
        out[prefix + k] = v
    for k, v in sd.items():
        if k.endswith('.gamma1'):
            p = k.split('.')
            out[f'{prefix}encoder.levels.{p[1]}.layers.{p[3]}.layer_scale_parameters'] = torch.stack(
                [v, sd[k[:-1] + '2']])
    return out


@pytest.mark.parametrize('name', ('nat_conv_ls', 'nat_conv'))
def test_checkpoint_layouts(name):
    cfg, sd, t = _load(name)
    x = t['input'].double()
    model = NAT(**cfg).eval().double()
    ref = t['logits.float64']
    layouts = {
        'training dict': {'model': {'module.' + k: v for k, v in sd.items()}},
        'hugging face': _to_hf(sd),
        'mm backbone': {**{'backbone.' + k: v for k, v in sd.items() if not k.startswith('head')},
                        'backbone.norm0.weight': torch.ones(8), 'decode_head.conv.weight': torch.ones(1)},
    }
    for layout, ckpt in layouts.items():
        converted = checkpoint_filter_fn(ckpt, model)
        if layout == 'mm backbone':
            missing = set(model.state_dict()) - set(converted)
            assert missing == {'head.weight', 'head.bias'}, missing
            converted.update({k: v for k, v in checkpoint_filter_fn(sd, model).items() if k.startswith('head')})
        model.load_state_dict({k: v.double() for k, v in converted.items()})
        out, _ = _run(model, x)
        assert (out - ref).abs().max() <= 1e-10, layout


def test_rpb_resized_for_other_kernel():
    cfg, sd, _ = _load('nat_conv')
    model = NAT(**dict(cfg, kernel_size=7)).eval()
    converted = checkpoint_filter_fn(sd, model)
    assert converted['stages.0.blocks.0.attn.rpb'].shape == (1, 13, 13)
    model.load_state_dict(converted)


def test_named_dilations_match_official_configs():
    # detection/configs/dinat/*_3x_coco.py, segmentation/configs/dinat*/upernet_*.py (official repo)
    tiny = (3, 4, 18, 5)
    assert resolve_dilations('coco', tiny) == [
        [1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3, 1, 3, 1]]
    assert resolve_dilations('coco', (3, 4, 6, 5)) == [[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7], [1, 3, 1, 3, 1]]
    assert resolve_dilations('ade20k', tiny) == [[1, 16, 1], [1, 4, 1, 8], [1, 2, 1, 3, 1, 4] * 3, [1, 2, 1, 2, 1]]
    assert resolve_dilations('ade20k_640', tiny)[2] == [1, 2, 1, 3, 1, 4, 1, 5, 1, 2, 1, 3, 1, 4, 1, 5, 1, 5]
    assert resolve_dilations('in1k', tiny) == [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5]
    assert resolve_dilations('in1k_384', tiny) == [[1, 13, 1], [1, 6, 1, 6], [1, 3] * 9, [1] * 5]
    # DiNAT_s
    assert resolve_dilations('coco', (2, 2, 18, 2), 'patch') == [[1, 28], [1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3]]
    assert resolve_dilations('ade20k', (2, 2, 6, 2), 'patch') == [[1, 16], [1, 8], [1, 2, 1, 3, 1, 4], [1, 2]]
    assert resolve_dilations('in1k', (2, 2, 6, 2), 'patch') == [[1, 8], [1, 4], [1, 2, 1, 2, 1, 2], [1, 1]]
    assert set(NAT_DILATIONS['conv']) == set(NAT_DILATIONS['patch'])
    model = timm.create_model('dinat_mini', dilations='ade20k')
    assert [b.attn.dilation[0] for b in model.stages[1].blocks] == [1, 4, 1, 8]
    assert resolve_dilations(None, (3, 4, 6, 5)) == [[1] * 3, [1] * 4, [1] * 6, [1] * 5]
    with pytest.raises(ValueError, match='unknown dilation schedule'):
        resolve_dilations('cityscapes', tiny)
    with pytest.raises(ValueError, match='do not match depths'):
        resolve_dilations([[1], [1], [1], [1]], tiny)
    with pytest.raises(ValueError, match='small_input'):
        NAT(small_input='crop')


def test_small_input_modes_are_what_they_claim():
    NeighborhoodAttention = functools.partial(NeighborhoodAttention2d, rel_pos_bias=True)  # NAT's attention
    torch.manual_seed(0)
    x = torch.randn(2, 9, 30, 16)  # [B, H, W, C]; kernel 7 x dilation 5 = 35 > 9 and > 30
    pad = NeighborhoodAttention(16, 2, kernel_size=7, dilation=5, small_input='pad').eval()
    clamp = NeighborhoodAttention(16, 2, kernel_size=7, dilation=5, small_input='clamp').eval()
    clamp.load_state_dict(pad.state_dict())
    with torch.no_grad():
        # pad: the attention of the zero-padded 35x35 map, cropped (NATTEN <= 0.14.6)
        big = F.pad(x, (0, 0, 0, 5, 0, 26))
        torch.testing.assert_close(pad(x), pad(big)[:, :9, :30], rtol=1e-5, atol=1e-6)
        # clamp: dilation (9 // 7, 30 // 7) = (1, 4), no padding
        ref = NeighborhoodAttention(16, 2, kernel_size=7, dilation=(1, 4), small_input='pad').eval()
        ref.load_state_dict(pad.state_dict())
        torch.testing.assert_close(clamp(x), ref(x), rtol=1e-5, atol=1e-6)
        # a map smaller than the kernel: clamp falls back to dilation 1 with padding to 7x7
        tiny = torch.randn(1, 3, 5, 16)
        one = NeighborhoodAttention(16, 2, kernel_size=7, dilation=1, small_input='pad').eval()
        one.load_state_dict(pad.state_dict())
        torch.testing.assert_close(clamp(tiny), one(F.pad(tiny, (0, 0, 0, 2, 0, 4)))[:, :3, :5], rtol=1e-5, atol=1e-6)


def _tiny_dinat(small_input, stem_type='conv'):
    # DiNAT-shaped (kernel 7, the COCO detection dilations up to 28), narrow so large inputs stay cheap
    torch.manual_seed(0)
    return NAT(embed_dim=8, depths=(1, 2, 2, 1), num_heads=(1, 1, 2, 2), dilations='coco', small_input=small_input,
               stem_type=stem_type, num_classes=5).eval()


def _random_sizes(n, seed):
    rng = random.Random(seed)
    return [(32, 1333), (1333, 32)] + [(rng.randint(32, 1333), rng.randint(32, 1333)) for _ in range(n)]


def _check_sizes(sizes, small_input, stem_type='conv'):
    model = _tiny_dinat(small_input, stem_type)
    for h, w in sizes:
        with torch.no_grad():
            final, feats = model.forward_intermediates(torch.randn(1, 3, h, w))
            out = model.forward_head(final)
        assert out.shape == (1, 5) and torch.isfinite(out).all(), (h, w)
        for i, f in enumerate(feats):
            r = 4 * 2 ** i
            assert f.shape[1] == 8 * 2 ** i and torch.isfinite(f).all()
            assert abs(f.shape[2] - h / r) < 2 and abs(f.shape[3] - w / r) < 2, (h, w, f.shape)


@pytest.mark.parametrize('small_input', ('pad', 'clamp'))
def test_random_sizes(small_input):
    _check_sizes(_random_sizes(2, seed=1), small_input)


@pytest.mark.slow
@pytest.mark.parametrize('stem_type', ('conv', 'patch'))
@pytest.mark.parametrize('small_input', ('pad', 'clamp'))
def test_random_sizes_more(small_input, stem_type):
    _check_sizes(_random_sizes(12, seed=2), small_input, stem_type)


def test_clamp_equals_pad_when_maps_are_large_enough():
    x = torch.randn(1, 3, 224, 224)  # 56, 28, 14, 7: the in1k schedule fits, so both modes are the same function
    a = NAT(embed_dim=8, depths=(2, 2, 2, 1), num_heads=(1, 1, 2, 2), dilations='in1k', small_input='pad').eval()
    b = NAT(embed_dim=8, depths=(2, 2, 2, 1), num_heads=(1, 1, 2, 2), dilations='in1k', small_input='clamp').eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


# --- strided GNA (stride > 1 on pretrained weights) ------------------------------------------------------------------

def test_stride_one_is_the_released_model():
    cfg, sd, t = _load('nat_conv_ls')
    x = t['input'].double()
    for stride in (None, 1, (1, 1), [1, 1, 1, 1]):
        out, _ = _run(_ours(dict(cfg, stride=stride), sd, torch.float64), x)
        assert (out - t['logits.float64']).abs().max() <= 1e-10, stride


def _set_backend(model, backend):
    for m in model.modules():
        if isinstance(m, NeighborhoodAttention2d):
            m.backend = backend
    return model


@pytest.mark.parametrize('small_input', ('pad', 'clamp'))
def test_stride_equals_reference_backend(small_input):
    # every layer a different (per-axis) stride, with dilations and rpb, on a non-square non-divisible input
    torch.manual_seed(0)
    depths = (2, 2, 3, 1)
    stride = [[(2, 3), 5], [3, (1, 4)], [(5, 5), 2, (3, 1)], 4]
    model = NAT(embed_dim=16, depths=depths, num_heads=(1, 2, 2, 4), kernel_size=5, dilations=[[1, 2], [1, 2], [
        1, 2, 1], [1]], stride=stride, small_input=small_input, num_classes=7).eval().double()
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.1)  # rpb and norms away from their init
    assert [b.attn.stride for b in model.stages[2].blocks] == [(5, 5), (2, 2), (3, 1)]
    x = torch.randn(2, 3, 123, 93, dtype=torch.float64)
    with torch.no_grad():
        out, feats = model.forward_intermediates(x)
        ref_out, ref_feats = _set_backend(model, 'reference').forward_intermediates(x)
    for a, b in zip([out] + feats, [ref_out] + ref_feats):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    _set_backend(model, 'auto')
    with torch.no_grad():
        plain = NAT(embed_dim=16, depths=depths, num_heads=(1, 2, 2, 4), kernel_size=5, dilations=[[1, 2], [1, 2], [
            1, 2, 1], [1]], small_input=small_input, num_classes=7).eval().double()
        plain.load_state_dict(model.state_dict())
        assert (plain(x) - model(x)).abs().max() > 1e-3  # the stride changes the function


@pytest.mark.parametrize('stride', (2, 7))
def test_stride_odd_sizes(stride):
    model = timm.create_model('dinat_mini', stride=stride, embed_dim=8, num_heads=(1, 1, 2, 2), num_classes=5).eval()
    for h, w in ((97, 61), (33, 130), (17, 23), (40, 40)):
        with torch.no_grad():
            out = model(torch.randn(1, 3, h, w))
        assert out.shape == (1, 5) and torch.isfinite(out).all(), (h, w)


def test_stride_validation():
    tiny = (3, 4, 18, 5)
    assert resolve_strides(None, tiny) == resolve_strides(1, tiny) == [[(1, 1)] * n for n in tiny]
    assert resolve_strides((2, 3), tiny)[3] == [(2, 3)] * 5
    assert resolve_strides([1, 2, 3, 7], tiny)[2] == [(3, 3)] * 18
    assert resolve_strides([1, 1, [2, 3] * 9, (1, 7)], tiny)[2][:3] == [(2, 2), (3, 3), (2, 2)]
    assert resolve_strides([[1, 2], 1], (2, 1)) == [[(1, 1), (2, 2)], [(1, 1)]]  # per layer before a pair
    assert resolve_strides([(1, 2), 1], (2, 1)) == [[(1, 1), (2, 2)], [(1, 1)]]
    assert resolve_strides([[(1, 2), (1, 2)], 1], (2, 1)) == [[(1, 2), (1, 2)], [(1, 1)]]
    for bad, match in ((0, 'stride 0'), (8, 'stride 8 .*kernel_size = 7'), ((1, 9), r'\(1, 9\)'),
                       ([1, 2, 3], 'does not match depths'), (2.5, 'does not match depths'),
                       ([1, 1, [2] * 17, 1], 'stage 2'), ([1, 1, 1, [1, 8, 1, 1, 1]], 'stage 3 layer 1: stride 8')):
        with pytest.raises(ValueError, match=match):
            resolve_strides(bad, tiny)
    with pytest.raises(ValueError, match='stride 6 .*kernel_size = 5'):
        timm.create_model('nat_mini', kernel_size=5, stride=6)
    with pytest.raises(ValueError, match=r'stride \(2, 4\) for kernel_size \(3, 3\)'):
        NeighborhoodAttention2d(16, 2, kernel_size=3, stride=(2, 4))


# --- isotropic NAT / DiNAT --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ('nat_isotropic', 'nat_isotropic_pad'))
def test_isotropic_official_fidelity(name):
    with safe_open(str(FIXTURES / f'{name}.safetensors'), 'pt') as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in f.keys()}
    cfg = json.loads(meta['config'])
    sd = {k[len('state_dict.'):]: v for k, v in t.items() if k.startswith('state_dict.')}
    n_blocks = sum(k.startswith('block') and k.endswith('float64') for k in t)
    assert n_blocks == cfg['depth']
    diffs = {}
    for dtype in (torch.float64, torch.float32):
        model = NATIsotropic(**cfg).eval().to(dtype)
        model.load_state_dict(checkpoint_filter_fn({'model': sd}, model))
        with torch.no_grad():
            logits, blocks = model.forward_intermediates(t['input'].to(dtype))
            logits = model.forward_head(logits)
        diffs[dtype] = max([(logits.double() - t['logits.float64']).abs().max().item()] + [
            (b.double() - t[f'block{i}.float64']).abs().max().item() for i, b in enumerate(blocks)])
    own32 = float(meta['official_f32_vs_f64'])
    assert diffs[torch.float64] <= 1e-10, diffs
    assert diffs[torch.float32] <= max(2 * own32, 1e-5) and diffs[torch.float32] <= 1e-3, (diffs, own32)


def test_isotropic_variants_and_dilations():
    model = timm.create_model('dinat_isotropic_small', embed_dim=24, num_heads=2, depth=4).eval()
    assert [b.attn.dilation for b in model.blocks] == [(1, 1), (2, 2), (1, 1), (2, 2)]
    assert model.feature_info[-1] == dict(num_chs=24, reduction=16, module='blocks.3')
    assert [b.attn.dilation[0] for b in NATIsotropic(depth=3, dilations=[3, 1, 2], embed_dim=8, num_heads=1).blocks] \
        == [3, 1, 2]
    strided = timm.create_model('nat_isotropic_small', embed_dim=24, num_heads=2, depth=4, stride=[1, 2, 7, (3, 1)])
    assert [b.attn.stride for b in strided.blocks] == [(1, 1), (2, 2), (7, 7), (3, 1)]
    with pytest.raises(ValueError, match='stride 8'):
        NATIsotropic(depth=2, embed_dim=8, num_heads=1, stride=8)
    with pytest.raises(ValueError, match='dilations must be 2 ints'):
        NATIsotropic(depth=2, embed_dim=8, num_heads=1, dilations=[1])
    # the official model is fixed to 224: ours takes any size (14x14 maps at 224, the official ones)
    with torch.no_grad():
        for h, w in ((224, 224), (97, 61), (17, 23)):
            assert model(torch.randn(1, 3, h, w)).shape == (1, 1000)
