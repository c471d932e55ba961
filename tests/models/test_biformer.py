"""BiFormer / BiFormer-STL: fidelity to the official code, checkpoint layouts, n_win, padding modes, extra norms.

The fixture tests/fixtures/biformer_model.safetensors was made with the official rayleizhu/BiFormer code (HEAD 1697bbb:
models/biformer.py, models/biformer_stl.py, object_detection/models_mm/biformer_mm.py, ops/bra_legacy.py) from
reduced-width configs (widths 16-24-32-40, head_dim 8 so the routing attention has 2-4 heads, stage-4 global
attention with 8 heads of 5 channels, topk 1/2/3 of 4 or 9 regions, layer scale on), every parameter perturbed with
seeded N(0, 0.2) noise and randomized BN statistics. Cases ('config' metadata holds our matching kwargs):

* ``cls``: the classification model (auto_pad=False), 2x3x64x64, n_win=2: logits and the four stage maps.
* ``mm``: the official detection backbone ``BiFormer_mm`` (auto_pad=True, per-output LayerNorm2d) with the ``cls``
  weights plus its ``extra_norms``, n_win=3, a non-square 75x101 input whose every stage map (19x26, 10x13, 5x7, 3x4)
  is padded by the legacy routing attention: the four normalized maps.
* ``stl``: the Swin-T-layout ablation model ``BiFormerSTL``, 1x3x64x64: logits and the stage maps.

Official outputs are float64; ``official_fp32_diff`` is the official model's own float32-vs-float64 max abs diff.
"""
import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open

from visionattn.layers import BiLevelRoutingAttention
from visionattn.models.biformer import BiFormer, checkpoint_filter_fn

FIXTURE = Path(__file__).resolve().parents[1] / 'fixtures' / 'biformer_model.safetensors'
CASES = ('cls', 'mm', 'stl')


@pytest.fixture(scope='module')
def fixture():
    with safe_open(str(FIXTURE), 'pt') as f:
        cfg = json.loads(f.metadata()['config'])
        t = {k: f.get_tensor(k) for k in f.keys()}
    return cfg, t


def _state(t, name):
    prefix = f'{name}.state.'
    sd = {k[len(prefix):]: v for k, v in t.items() if k.startswith(prefix)}
    if name == 'mm':  # the mm case holds only its extra norms; the rest are the cls weights
        sd = {**_state(t, 'cls'), **sd}
        sd = {k: v for k, v in sd.items() if not k.startswith(('norm.', 'head.'))}
    return sd


def _ours(cfg, t, name, dtype, **kwargs):
    model = BiFormer(**{**cfg[name], **kwargs}).eval()
    sd = checkpoint_filter_fn(_state(t, name), model)
    missing, unexpected = model.load_state_dict(sd, strict=name != 'mm')
    if name == 'mm':  # the official dense backbone deletes the classification norm and head
        assert not unexpected and all(k.startswith(('norm.', 'head.')) for k in missing), (missing, unexpected)
    return model.to(dtype)


def _max_diff(model, t, name, dtype):
    x = t[f'{name}.input'].to(dtype)
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
        diffs = [(m.double() - t[f'{name}.stage{i}']).abs().max().item() for i, m in enumerate(maps)]
        if f'{name}.logits' in t:
            diffs.append((model(x).double() - t[f'{name}.logits']).abs().max().item())
    assert len(maps) == 4
    return max(diffs)


@pytest.mark.parametrize('name', CASES)
def test_official_float64(fixture, name):
    cfg, t = fixture
    d = _max_diff(_ours(cfg, t, name, torch.float64), t, name, torch.float64)
    assert d <= 1e-10, f'{name}: float64 max abs diff {d}'


@pytest.mark.parametrize('name', CASES)
def test_official_float32(fixture, name):
    cfg, t = fixture
    d = _max_diff(_ours(cfg, t, name, torch.float32), t, name, torch.float32)
    official = t[f'{name}.official_fp32_diff'].item()
    # 2x the official model's own float32 error; 1e-5 floor where that error is ~1e-6 (different summation orders)
    assert d <= 1e-3 and d <= max(2 * official, 1e-5), f'{name}: float32 max abs diff {d} (official {official})'


@pytest.mark.parametrize('backend', ['reference', 'gather'])
@pytest.mark.parametrize('name', ['cls', 'mm'])
def test_official_float64_backends(fixture, name, backend):
    cfg, t = fixture
    d = _max_diff(_ours(cfg, t, name, torch.float64, attn_backend=backend), t, name, torch.float64)
    assert d <= 1e-10


def test_masked_padding(fixture):
    """'masked' equals 'legacy' where nothing is padded and differs where the maps are padded."""
    cfg, t = fixture
    legacy = _ours(cfg, t, 'cls', torch.float64)
    masked = _ours(cfg, t, 'cls', torch.float64, bra_padding='masked')
    with torch.no_grad():
        x = t['cls.input'].double()
        torch.testing.assert_close(masked(x), legacy(x), rtol=0, atol=1e-12)
        x = x[..., :60, :52]  # stage maps 15x13, 8x7, 4x4, 2x2: stages 1-2 padded to n_win=2
        assert not torch.allclose(masked(x), legacy(x))
        assert torch.isfinite(masked(x)).all()
    none = _ours(cfg, t, 'cls', torch.float64, bra_padding='none')
    with pytest.raises(ValueError, match='divisible'):
        none(x)


def test_n_win_is_not_a_parameter():
    shapes = {n: {k: v.shape for k, v in BiFormer(n_win=n).state_dict().items()} for n in (7, 8, 16)}
    assert shapes[7] == shapes[8] == shapes[16]
    model = BiFormer(depths=(1, 1, 1, 1), n_win=16).eval()
    bra = [m for m in model.modules() if isinstance(m, BiLevelRoutingAttention)]
    assert bra and all(m.n_win == 16 for m in bra)
    with torch.no_grad():  # COCO-style: stage maps 20x29 ... padded to multiples of 16
        assert torch.isfinite(model(torch.randn(1, 3, 80, 113))).all()


def test_official_key_layouts(fixture):
    """Training dict ('model'), mm 'backbone.' prefix, fairscale wrapper names, STL layout, own keys (idempotent)."""
    cfg, t = fixture
    model = BiFormer(**cfg['cls'])
    official = _state(t, 'cls')
    assert 'stages.0.0.attn.qkv.qkv.weight' in official and 'downsample_layers.0.0.weight' in official
    ref = checkpoint_filter_fn(official, model)
    own = {k for k in model.state_dict() if not k.endswith('num_batches_tracked')}  # not stored in the fixture
    assert set(ref) == own
    assert ref['stages.0.blocks.0.attn.qkv.weight'] is official['stages.0.0.attn.qkv.qkv.weight']
    assert ref['stages.3.blocks.0.attn.qkv.weight'] is official['stages.3.0.attn.qkv.weight']
    assert ref['stages.0.blocks.0.ls1.gamma'] is official['stages.0.0.gamma1']
    variants = [
        {'model': official, 'optimizer': {}, 'epoch': 3},
        {'state_dict': {'backbone.' + k: v for k, v in official.items()}, 'meta': {}},
        {k.replace('stages.1.', 'stages.1._checkpoint_wrapped_module.'): v for k, v in official.items()},
        ref,
    ]
    for sd in variants:
        out = checkpoint_filter_fn(sd, model)
        assert set(out) == set(ref) and all(out[k] is ref[k] for k in ref)
    stl = BiFormer(**cfg['stl'])
    assert set(checkpoint_filter_fn(_state(t, 'stl'), stl)) == {
        k for k in stl.state_dict() if not k.endswith('num_batches_tracked')}


def test_extra_norms(fixture):
    """extra_norms: classification weights load (norms keep their init, as the official backbone); the maps are
    the LayerNorm2d of the plain maps; a model without them drops a checkpoint's extra norms."""
    cfg, t = fixture
    plain = _ours(cfg, t, 'cls', torch.float64)
    dense = BiFormer(**cfg['cls'], extra_norms=True).eval().double()
    dense.load_state_dict(checkpoint_filter_fn(_state(t, 'cls'), dense))
    x = t['cls.input'].double()
    with torch.no_grad():
        a = plain.forward_intermediates(x, intermediates_only=True)
        b = dense.forward_intermediates(x, intermediates_only=True)
        for i, (p, q) in enumerate(zip(a, b)):
            torch.testing.assert_close(q, dense.extra_norms[i](p))
        torch.testing.assert_close(dense(x), plain(x))
    # as the mm adapter uses it: prune to stages 1-2 (head, norm and the last stage's extra norm go)
    kept = dense.prune_intermediate_layers([1, 2], prune_norm=True)
    assert kept == [1, 2] and len(dense.extra_norms) == 3
    with torch.no_grad():
        pruned = dense.forward_intermediates(x, indices=kept, intermediates_only=True)
    torch.testing.assert_close(pruned, b[1:3])
    mm_state = checkpoint_filter_fn({'backbone.' + k: v for k, v in _state(t, 'mm').items()}, plain)
    assert not any(k.startswith('extra_norms') for k in mm_state)
    feats = timm.create_model('biformer_tiny', features_only=True, extra_norms=True, pretrained=False)
    assert feats.feature_info.channels() == [64, 128, 256, 512]


def test_any_input_size():
    model = timm.create_model('biformer_tiny', depths=(1, 1, 1, 1)).eval()
    with torch.no_grad():
        for size in ((257, 319), (33, 130), (17, 23), (8, 8)):
            maps = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
            assert [m.shape[-2:] for m in maps][0] == torch.Size([-(-s // 4) for s in size])
            assert all(torch.isfinite(m).all() for m in maps)


def test_stl_small_input_and_bad_args():
    stl = timm.create_model('biformer_stl', depths=(1, 1, 1, 1)).eval()
    with pytest.raises(ValueError, match='height 17, width 23'):
        stl(torch.randn(1, 3, 17, 23))
    with torch.no_grad():
        assert stl(torch.randn(1, 3, 32, 45)).shape == (1, 1000)
    with pytest.raises(ValueError, match='channels'):
        stl(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match='topk'):
        BiFormer(topks=(1, 4, 16, 0))
    with pytest.raises(ValueError, match='padding'):
        BiFormer(bra_padding='zeros')
    with pytest.raises(ValueError, match='one value per stage'):
        BiFormer(n_win=(7, 7))


@pytest.mark.parametrize('size,depths', [(64, (1, 1, 2, 1)), pytest.param(224, (2, 2, 8, 2), marks=pytest.mark.slow)])
def test_bf16_autocast_no_nan(size, depths):
    torch.manual_seed(0)
    model = timm.create_model('biformer_tiny', num_classes=10, depths=depths).train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, size, size))
    out.float().mean().backward()
    assert torch.isfinite(out.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize('fused', [True, False])
def test_global_attention_fp16_large_logits(fused):
    """Stage-4 attention stays finite under fp16 autocast where the official (q @ k^T) * scale overflows."""
    from visionattn.models.biformer import AttentionLePE
    torch.manual_seed(0)
    attn = AttentionLePE(512, num_heads=8).eval()  # stage 4 of T/S: head_dim 64, scale 1/8
    attn.fused_attn = fused
    with torch.no_grad():
        attn.qkv.weight.normal_(0, 3.2)
        x = torch.randn(1, 5, 6, 512)
        q, k, _ = attn.qkv(x).reshape(1, 30, 3, 8, 64).permute(2, 0, 3, 1, 4)
        logits = (q @ k.transpose(-2, -1)).abs().max()
        assert logits > 65504 > logits * attn.scale  # the unscaled logits overflow fp16, the scaled ones do not
        with torch.autocast('cpu', dtype=torch.float16):
            out = attn(x)
    assert torch.isfinite(out).all()


def test_pretrained_download_path(fixture, tmp_path):
    """pretrained=True through the cfg's (url, file name) + custom_load: an official-style training dict served from a
    local HTTP server at a '/root/content' URL like the OneDrive ones; head and in_chans adaptation."""
    import argparse
    import functools
    import http.server
    import threading

    cfg, t = fixture
    serve = tmp_path / 'serve' / 'root'
    serve.mkdir(parents=True)
    torch.save({'model': _state(t, 'cls'), 'epoch': 299, 'max_accuracy': 81.4, 'args': argparse.Namespace(lr=5e-4)},
               serve / 'content')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / 'serve'))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f'http://127.0.0.1:{server.server_address[1]}/root/content'
        # the served checkpoint has the fixture's 10 classes (pretrained_cfg num_classes, as timm adapts heads by it)
        overlay = dict(url=(url, 'biformer_fixture.pth'), custom_load=True, num_classes=10)
        kw = dict(cfg['cls'], pretrained=True, pretrained_cfg_overlay=overlay, cache_dir=str(tmp_path / 'cache'))
        model = timm.create_model('biformer_tiny', **kw).eval()
        assert (tmp_path / 'cache' / 'biformer_fixture.pth').is_file()
        x = t['cls.input']
        with torch.no_grad():
            assert (model(x).double() - t['cls.logits']).abs().max() < 1e-3
        feats = timm.create_model('biformer_tiny', features_only=True, **kw).eval()
        with torch.no_grad():
            assert (feats(x)[0].double() - t['cls.stage0']).abs().max() < 1e-3
        kw.update(num_classes=5, in_chans=1)
        other = timm.create_model('biformer_tiny', **kw)
        assert other.head.out_features == 5 and other.stem[0].in_channels == 1
        torch.testing.assert_close(other.stages[1].blocks[0].attn.qkv.weight, model.stages[1].blocks[0].attn.qkv.weight)
    finally:
        server.shutdown()
