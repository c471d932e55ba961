"""RAVLT: fidelity to the official code (fixture), the RALA layer and op, checkpoint layouts, mixed precision.

The fixture tests/fixtures/ravlt_model.safetensors was made with the official qhfan/RALA classification code
(``classfication/RALA.py`` @ a86314f, class ``RAVLT``) at reduced width: config in the file's metadata (linear and
softmax blocks, a stage mixing both, 1-4 heads, layer scale on and off, several MLP ratios), every parameter perturbed
with seeded noise and random BatchNorm statistics. It holds the official float32 state dict, two inputs (2x3x48x48
and a non-square, non-divisible 1x3x61x45) and the official logits and stage maps (NCHW, before each downsampling)
computed in float64 and in float32.
"""
import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors import safe_open

import visionattn  # noqa: F401
from visionattn.layers import RALA
from visionattn.models.ravlt import RAVLT, checkpoint_filter_fn
from visionattn.ops.rala import _rope_tables, apply_rope_2d, rope_2d_tables

FIXTURE = Path(__file__).resolve().parents[1] / 'fixtures' / 'ravlt_model.safetensors'
TAGS = ('', '_ns')


def _load():
    with safe_open(str(FIXTURE), 'pt') as f:
        cfg = json.loads(f.metadata()['config'])
        t = {k: f.get_tensor(k) for k in f.keys()}
    sd = {k[len('state_dict.'):]: v for k, v in t.items() if k.startswith('state_dict.')}
    return cfg, sd, t


def _our_cfg(cfg):
    return dict(
        num_classes=cfg['num_classes'], embed_dims=cfg['embed_dims'], depths=cfg['depths'],
        num_heads=cfg['num_heads'], attn_types=cfg['flagss'], mlp_ratios=cfg['mlp_ratios'],
        layer_scales=[v if on else None for on, v in zip(cfg['layerscales'], cfg['layer_init_values'])],
        head_hidden_size=cfg['projection'], drop_path_rate=cfg['drop_path_rate'])


def _ours(cfg, sd, dtype=torch.float32):
    model = RAVLT(**_our_cfg(cfg)).eval()
    model.load_state_dict(checkpoint_filter_fn({'model': sd}, model))
    return model.to(dtype)


def _run(model, x):
    with torch.no_grad():
        return model(x), model.forward_intermediates(x, intermediates_only=True)


def _max_diff(model, t, tag, dtype):
    logits, stages = _run(model, t['input' + tag].to(dtype))
    assert len(stages) == 4
    diffs = [(logits.double() - t[f'logits.float64{tag}']).abs().max().item()]
    diffs += [(s.double() - t[f'stage{i}.float64{tag}']).abs().max().item() for i, s in enumerate(stages)]
    return max(diffs)


def test_official_fidelity():
    cfg, sd, t = _load()
    model64, model32 = _ours(cfg, sd, torch.float64), _ours(cfg, sd, torch.float32)
    for tag in TAGS:
        d64 = _max_diff(model64, t, tag, torch.float64)
        assert d64 <= 1e-10, f'{tag}: float64 max abs diff {d64}'
        d32 = _max_diff(model32, t, tag, torch.float32)
        own = max([(t[f'logits.float32{tag}'].double() - t[f'logits.float64{tag}']).abs().max().item()] + [
            (t[f'stage{i}.float32{tag}'].double() - t[f'stage{i}.float64{tag}']).abs().max().item()
            for i in range(4)])
        assert d32 <= max(2 * own, 1e-5) and d32 <= 1e-3, f'{tag}: float32 max abs diff {d32} (official own {own})'


def test_fixture_exercises_mapping():
    # a wrong mapping of layer scale, head-major qkvo or the classifier must move the outputs
    cfg, sd, t = _load()
    x = t['input_ns'].double()
    ref = _run(_ours(cfg, sd, torch.float64), x)
    for key in ('layers.0.blocks.0.gamma_1', 'layers.1.blocks.1.attn.qkvo.weight', 'layers.2.blocks.0.attn.lepe.bias',
                'head.weight', 'layers.0.downsample.norm.running_var'):
        bad = dict(sd)
        bad[key] = sd[key].flatten().flip(0).reshape(sd[key].shape)
        out = _run(_ours(cfg, bad, torch.float64), x)
        diff = max((a - b).abs().max().item() for a, b in zip([out[0]] + out[1], [ref[0]] + ref[1]))
        assert diff > 1e-3, key


def test_checkpoint_layouts():
    cfg, sd, t = _load()
    model = RAVLT(**_our_cfg(cfg)).eval().double()
    ref = t['logits.float64_ns']
    x = t['input_ns'].double()
    # a training dict with EMA, an mm backbone (GLTA) checkpoint plus the head, and our own state dict
    ours = checkpoint_filter_fn(sd, model)
    backbone = {'backbone.' + k: v for k, v in sd.items() if not k.startswith(('proj.', 'norm.', 'head.'))}
    backbone.update({f'backbone.extra_norms.{i}.norm.weight': torch.ones(c) for i, c in enumerate(cfg['embed_dims'])})
    backbone['neck.conv.weight'] = torch.ones(1)
    for name, ckpt in (('training dict', {'model': sd, 'model_ema': {}, 'epoch': 3}), ('ours', ours),
                       ('backbone', backbone)):
        converted = checkpoint_filter_fn(ckpt, model)
        if name == 'backbone':
            missing = set(model.state_dict()) - set(converted)
            assert all(k.startswith(('conv_head', 'norm_head', 'head')) for k in missing), missing
            converted.update({k: v for k, v in ours.items() if k in missing})
        model.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in converted.items()})
        with torch.no_grad():
            assert (model(x) - ref).abs().max() <= 1e-10, name


def _rala_official(module, x):
    """The official GateLinearAttentionNoSilu / VanillaSelfAttention computation over ``module``'s weights."""
    B, C, H, W = x.shape
    n, d, L = module.num_heads, module.head_dim, H * W
    sin, cos = _rope_tables(H, W, d, x.dtype, x.device)
    qkvo = module.qkvo(x)
    o, lepe = qkvo[:, 3 * C:], module.lepe(qkvo[:, 2 * C:3 * C])
    q, k, v = qkvo[:, :3 * C].reshape(B, 3, n, d, L).transpose(-2, -1).unbind(1)
    if module.attn_type == 'linear':
        q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
        eff = torch.softmax(module.scale * q.mean(dim=-2, keepdim=True) @ k.transpose(-1, -2), dim=-1)
        k = k * eff.transpose(-1, -2) * L
        z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + module.eps)
        kv = (apply_rope_2d(k, sin, cos).transpose(-2, -1) * L ** -0.5) @ (v * L ** -0.5)
        res = apply_rope_2d(q, sin, cos) @ kv * z
    else:
        q, k = apply_rope_2d(q, sin, cos), apply_rope_2d(k, sin, cos)
        res = torch.softmax(module.scale * q @ k.transpose(-1, -2), dim=-1) @ v
    return module.proj((res.transpose(-2, -1).reshape(B, C, H, W) + lepe) * o)


@pytest.mark.parametrize('attn_type', ['linear', 'softmax'])
@pytest.mark.parametrize('size', [(7, 5), (1, 1), (12, 12)])
def test_rala_layer(attn_type, size):
    torch.manual_seed(0)
    m = RALA(24, 3, attn_type=attn_type).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    x = torch.randn(2, 24, *size, dtype=torch.float64)
    torch.testing.assert_close(m(x), _rala_official(m, x), rtol=0, atol=1e-10)


def test_rope_tables():
    sin, cos = rope_2d_tables(3, 5, 8)
    assert sin.shape == (15, 8) and sin.dtype == torch.float32
    assert rope_2d_tables(3, 5, 8)[0] is sin  # cached
    assert rope_2d_tables(3, 5, 8, torch.bfloat16)[0] is sin  # low precision gets the float32 table
    # rows rotate the first half of the channels, columns the second
    ang = torch.atan2(sin, cos).reshape(3, 5, 8)
    assert torch.allclose(ang[:, :, :4], ang[:, :1, :4].expand(-1, 5, -1))
    assert torch.allclose(ang[:, :, 4:], ang[:1, :, 4:].expand(3, -1, -1))
    with pytest.raises(ValueError, match='divisible by 4'):
        rope_2d_tables(3, 5, 6)
    with pytest.raises(ValueError, match='head_dim 6'):
        RALA(12, 2)


def test_attn_types_and_errors():
    model = timm.create_model('ravlt_tiny', num_classes=0)
    types = [[b.attn.attn_type for b in s.blocks] for s in model.stages]
    assert types == [['linear'] * 2, ['linear'] * 2, ['softmax'] * 6, ['softmax'] * 2]
    with pytest.raises(ValueError, match='depth 2'):
        RAVLT(depths=(2, 2, 2, 2), attn_types=(['l'], 'linear', 'softmax', 'softmax'))
    with pytest.raises(ValueError, match='channels'):
        model(torch.randn(1, 1, 32, 32))


def test_variants_shapes():
    # parameter counts of the official README (15, 26, 48, 95 M) and the feature pyramid
    counts = {'ravlt_tiny': 15, 'ravlt_small': 26, 'ravlt_base': 48, 'ravlt_large': 95}
    for name, m in counts.items():
        with torch.device('meta'):
            model = timm.create_model(name)
        assert round(sum(p.numel() for p in model.parameters()) / 1e6) == m, name
    model = timm.create_model('ravlt_tiny', features_only=True).eval()
    assert model.feature_info.channels() == [64, 128, 256, 512]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 67, 45))
    assert [tuple(f.shape[2:]) for f in feats] == [(17, 12), (9, 6), (5, 3), (3, 2)]


def _rala_official_fp16(q, k, v, sin, cos):
    """The official linear attention core as it runs under fp16 autocast: fp16 matmuls, float32 elementwise."""
    L = q.shape[-2]
    q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
    eff = torch.softmax((q.shape[-1] ** -0.5 * q.mean(dim=-2, keepdim=True) @ k.transpose(-1, -2)).float(), dim=-1)
    k = k * eff.transpose(-1, -2) * L  # float32 (promoted by the float32 softmax)
    q_r, k_r = apply_rope_2d(q.float(), sin, cos), apply_rope_2d(k, sin, cos)
    z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1).half() + 1e-6)
    kv = (k_r.transpose(-2, -1) * L ** -0.5).half() @ (v * L ** -0.5)
    return q_r.half() @ kv * z


def test_fp16_overflow_of_official_normaliser():
    # q, k ~ 40 are fp16 values; q . mean(k) over 64 channels (~1e5) is not: the official z = 1 / (inf) = 0 meets
    # q_rope @ kv = inf, giving NaN. The op computes in float32 and stays finite.
    from visionattn.ops.rala import rank_augmented_linear_attention
    torch.manual_seed(0)
    q, k = (torch.randn(1, 1, 256, 64) + 40).half(), (torch.randn(1, 1, 256, 64) + 40).half()
    v = (torch.randn(1, 1, 256, 64) * 30).half()
    sin, cos = rope_2d_tables(16, 16, 64)
    assert torch.isnan(_rala_official_fp16(q, k, v, sin, cos)).any()
    out = rank_augmented_linear_attention(q, k, v, sin, cos)
    ref = rank_augmented_linear_attention(q.double(), k.double(), v.double(), sin.double(), cos.double())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert ((out.double() - ref).abs().max() / ref.abs().max()) < 1e-2


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_mixed_precision_no_nan(dtype):
    torch.manual_seed(0)
    model = RAVLT(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4), num_classes=10).train()
    x = torch.randn(2, 3, 96, 80)
    with torch.autocast('cpu', dtype=dtype):
        out = model(x)
    out.float().sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_out_norms_glta_layout():
    # the official GLTA backbone: stage maps through per-output LayerNorm2d (extra_norms.i.norm)
    cfg, sd, t = _load()
    torch.manual_seed(0)
    backbone = {'backbone.' + k: v for k, v in sd.items() if not k.startswith(('proj.', 'norm.', 'head.'))}
    norms = {}
    for i, c in enumerate(cfg['embed_dims']):
        norms[i] = (torch.randn(c, dtype=torch.float64) + 1, torch.randn(c, dtype=torch.float64))
        backbone[f'backbone.extra_norms.{i}.norm.weight'], backbone[f'backbone.extra_norms.{i}.norm.bias'] = norms[i]
    model = RAVLT(**_our_cfg(cfg), out_norms=True).eval().double()
    converted = checkpoint_filter_fn({'state_dict': backbone}, model)
    assert {k for k in converted if k.startswith('out_norms')} == {
        f'out_norms.{i}.{p}' for i in range(4) for p in ('weight', 'bias')}
    model.load_state_dict(converted, strict=False)
    with torch.no_grad():
        maps = model.forward_intermediates(t['input_ns'].double(), intermediates_only=True)
    for i, m in enumerate(maps):
        ref = F.layer_norm(t[f'stage{i}.float64_ns'].permute(0, 2, 3, 1), (m.shape[1],), *norms[i], eps=1e-6)
        assert (m - ref.permute(0, 3, 1, 2)).abs().max() <= 1e-10
    assert len(model.prune_intermediate_layers([1])) == 1 and len(model.out_norms) == 2
