"""TransNeXt: equality with the official code (fixture), the aggregated-attention op, sizes and conversion."""
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import visionattn  # noqa: F401
from visionattn.models.transnext import TransNeXt, _cpb_axis, checkpoint_filter_fn
from visionattn.ops import aggregated_attention

FIXTURE = Path(__file__).parents[1] / 'fixtures' / 'transnext_model.safetensors'
# The official model of the fixture (classification/transnext.py, native attention; the mm backbone is
# segmentation/upernet/transnext_native.py with mmseg/mmcv imports stubbed): TransNeXt(img_size=64,
# pretrain_size=96, num_classes=10, norm_layer=LayerNorm(eps=1e-6), **FIXTURE_CFG) with seeded perturbed weights
# (every parameter, norms 1 + noise), run in float32 and float64: classification logits at 64x64 (also with
# fixed_pool_size=3), the mm backbone's four stage maps at 64x64 and at 90x75 with is_extrapolation False and True.
FIXTURE_CFG = dict(
    embed_dims=(16, 24, 32, 40), num_heads=(2, 2, 4, 4), depths=(1, 2, 1, 1), mlp_ratios=(8, 8, 4, 4),
    sr_ratios=(8, 4, 2, 1), window_size=(3, 3, 3, None), patch_size=4, qkv_bias=True)


def _fixture():
    t = load_file(FIXTURE)
    sd = {k.removeprefix('state_dict.'): v for k, v in t.items() if k.startswith('state_dict.')}
    return t, {'model': sd, 'args': None}  # the official training file layout


def _model(ckpt, **kwargs):
    model = TransNeXt(img_size=64, pretrain_size=96, num_classes=10, **FIXTURE_CFG, **kwargs).eval()
    model.load_state_dict(checkpoint_filter_fn(ckpt, model), strict=True)
    return model


def _compare(outs32, outs64, t, names):
    for o32, o64, name in zip(outs32, outs64, names):
        ref64, ref32 = t[name + '.f64'], t[name + '.f32']
        assert o64.shape == ref64.shape, name
        diff64 = (o64 - ref64).abs().max().item()
        assert diff64 <= 1e-8, f'{name}: float64 differs by {diff64}'
        own = (ref32.double() - ref64).abs().max().item()
        diff32 = (o32.double() - ref64).abs().max().item()
        assert diff32 <= max(2 * own, 1e-6) and diff32 <= 1e-3, f'{name}: float32 differs by {diff32} (official {own})'


def _run(model, x, fn):
    with torch.no_grad():
        out32 = fn(model, x)
        model.double()
        out64 = fn(model, x.double())
        model.float()
    return out32, out64


@pytest.mark.parametrize('fixed', [False, True])
def test_logits_equal_official(fixed):
    t, ckpt = _fixture()
    model = _model(ckpt, fixed_pool_size=3 if fixed else None)
    out32, out64 = _run(model, t['input'], lambda m, x: [m(x)])
    _compare(out32, out64, t, ['fixed.logits' if fixed else 'cls.logits'])


def test_stage_maps_equal_official_training_size():
    t, ckpt = _fixture()
    model = _model(ckpt)
    out32, out64 = _run(model, t['input'], lambda m, x: m.forward_intermediates(x, intermediates_only=True))
    _compare(out32, out64, t, [f'mm.maps{i}' for i in range(4)])


@pytest.mark.parametrize('mode', ['interpolate', 'extrapolate'])
def test_stage_maps_equal_official_mm_other_size(mode):
    """90x75 (non-square, not a multiple of 32) against the official mm backbone in both position-bias modes."""
    t, ckpt = _fixture()
    model = _model(ckpt, pos_bias=mode)
    out32, out64 = _run(model, t['input_odd'], lambda m, x: m.forward_intermediates(x, intermediates_only=True))
    tag = 'mm_interp' if mode == 'interpolate' else 'mm_extrap'
    _compare(out32, out64, t, [f'{tag}.maps{i}' for i in range(4)])


def test_cpb_axis_tables_equal_2d_unique():
    """The per-axis tables reproduce the official 2-D ``torch.unique`` table and index (here at 23x19 over 2x3)."""
    qh, qw, kh, kw, ph, pw = 23, 19, 2, 3, 24, 24
    ah = torch.arange(qh, dtype=torch.float32)
    aw = torch.arange(qw, dtype=torch.float32)
    akh = F.adaptive_avg_pool1d(ah[None], kh)[0]
    akw = F.adaptive_avg_pool1d(aw[None], kw)[0]
    akh, akw = [a.reshape(-1) for a in torch.meshgrid(akh, akw, indexing='ij')]
    aqh, aqw = [a.reshape(-1) for a in torch.meshgrid(ah, aw, indexing='ij')]
    rel = torch.stack([(aqh[:, None] - akh[None]) / (ph - 1) * 8, (aqw[:, None] - akw[None]) / (pw - 1) * 8], -1)
    table, idx = torch.unique(rel.view(-1, 2), return_inverse=True, dim=0)
    table = torch.sign(table) * torch.log2(torch.abs(table) + 1.0) / torch.log2(torch.tensor(8, dtype=torch.float32))
    th, ih = _cpb_axis(qh, kh, ph)
    tw, iw = _cpb_axis(qw, kw, pw)
    ours = torch.stack(torch.meshgrid(th, tw, indexing='ij'), -1).reshape(-1, 2)
    ours_idx = (ih[:, None, :, None] * len(tw) + iw[None, :, None, :]).reshape(-1)
    assert torch.equal(ours, table)
    assert torch.equal(ours_idx, idx)


def _agg_inputs(b=2, h=5, w=7, heads=3, d=4, p=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=dtype)
    return dict(
        query=r(b, h, w, heads, d), key=r(b, h, w, heads, d), value=r(b, h, w, heads, d + 1),
        pool_key=r(b, p, heads, d), pool_value=r(b, p, heads, d + 1), kernel_size=3, local_bias=r(heads, 9),
        pool_bias=r(h, w, heads, p), local_weights=r(b, h, w, heads, 9), scale=0.7)


def _unfold_aggregated(query, key, value, pool_key, pool_value, kernel_size, local_bias, pool_bias, local_weights,
                       scale):
    """TransNeXt's native computation (nn.Unfold with zero padding + padding mask), in heads-last layout."""
    b, h, w, heads, d = query.shape
    n, kk = h * w, kernel_size ** 2
    q = query.reshape(b, n, heads, d).transpose(1, 2) * scale

    def unfold(x):
        x = x.reshape(b, n, -1).transpose(1, 2).reshape(b, -1, h, w)
        x = F.unfold(x, kernel_size, padding=kernel_size // 2)
        return x.reshape(b, heads, -1, kk, n).permute(0, 1, 4, 2, 3)  # [B, heads, N, d, kk]
    k_loc, v_loc = unfold(key), unfold(value)
    mask = F.unfold(torch.ones(1, 1, h, w), kernel_size, padding=kernel_size // 2)[0].T == 0
    a_loc = ((q.unsqueeze(-2) @ k_loc).squeeze(-2) + local_bias.unsqueeze(1)).masked_fill(mask, float('-inf'))
    a_pool = q @ pool_key.permute(0, 2, 3, 1) + pool_bias.reshape(n, heads, -1).transpose(0, 1)
    attn = torch.cat([a_loc, a_pool], -1).softmax(-1)
    a_loc, a_pool = attn.split([kk, attn.shape[-1] - kk], -1)
    lw = local_weights.reshape(b, n, heads, kk).transpose(1, 2)
    out = ((lw + a_loc).unsqueeze(-2) @ v_loc.transpose(-2, -1)).squeeze(-2) + a_pool @ pool_value.transpose(1, 2)
    return out.transpose(1, 2).reshape(b, h, w, heads, -1)


@pytest.mark.parametrize('backend', ['reference', 'blocked'])
def test_aggregated_op_equals_unfold(backend):
    args = _agg_inputs()
    ref = _unfold_aggregated(**args)
    out = aggregated_attention(**args, backend=backend)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_aggregated_op_borders_not_clamped():
    """A corner query sees only its 4 in-image window keys (plus the pooled ones), not a window moved inward."""
    args = _agg_inputs(b=1, h=4, w=4, heads=1, d=2, p=1)
    args.update(local_bias=None, pool_bias=None, local_weights=None, scale=1.)
    args['pool_key'] = torch.full_like(args['pool_key'], 0.)  # logit 0 against a pooled value
    v = torch.zeros_like(args['value'])
    v[0, 2, 2] = 1.  # outside the corner's zero-padded window, inside a clamped one
    args['value'] = v
    args['pool_value'] = torch.zeros_like(args['pool_value'])
    out = aggregated_attention(**args)
    assert out[0, 0, 0].abs().max() == 0


def test_aggregated_op_backward_matches_reference():
    args = _agg_inputs(dtype=torch.float64)
    names = ['query', 'key', 'value', 'pool_key', 'pool_value', 'local_bias', 'pool_bias', 'local_weights']
    grads = []
    for backend in ('reference', 'blocked'):
        leaf = {k: (v.clone().requires_grad_() if k in names else v) for k, v in args.items()}
        aggregated_attention(**leaf, backend=backend).square().sum().backward()
        grads.append([leaf[k].grad for k in names])
    for n, a, b in zip(names, *grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=n)


def test_aggregated_op_bad_input():
    args = _agg_inputs()
    with pytest.raises(ValueError, match='kernel_size'):
        aggregated_attention(**dict(args, kernel_size=2))
    with pytest.raises(ValueError, match='pool_bias'):
        aggregated_attention(**dict(args, pool_bias=args['pool_bias'][:, :3]))


def test_tables_cached_and_modes_agree_at_training_size():
    torch.manual_seed(0)
    a = timm.create_model('transnext_micro', pretrained=False, depths=(1, 1, 1, 1), num_classes=0).eval()
    b = timm.create_model('transnext_micro', pretrained=False, depths=(1, 1, 1, 1), num_classes=0,
                          pos_bias='extrapolate').eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
        assert not torch.equal(a(x[..., :160, :192]), b(x[..., :160, :192]))  # the modes differ elsewhere


def test_bad_arguments():
    with pytest.raises(ValueError, match='pos_bias'):
        TransNeXt(pos_bias='nearest')
    with pytest.raises(ValueError, match='channels'):
        timm.create_model('transnext_micro', depths=(1, 1, 1, 1))(torch.randn(1, 4, 64, 64))


def test_checkpoint_filter_mm_keys():
    """mm (backbone.-prefixed) and classification keys map to the same names; buffers are dropped."""
    _, ckpt = _fixture()
    model = TransNeXt(img_size=64, pretrain_size=96, num_classes=10, **FIXTURE_CFG)
    sd = dict(ckpt['model'])
    sd['relative_pos_index1'] = torch.zeros(3, dtype=torch.long)
    sd['block1.0.attn.seq_length_scale'] = torch.zeros(3)
    mm = {'state_dict': {'backbone.' + k: v for k, v in sd.items() if not k.startswith('head.')}}
    a, b = checkpoint_filter_fn(sd, model), checkpoint_filter_fn(mm, model)
    assert set(a) == set(model.state_dict())
    assert set(b) == set(model.state_dict()) - {'head.weight', 'head.bias'}


def test_aggregated_op_custom_op_gradients():
    """The compile path (custom op with a recomputing backward) gives the eager values and gradients."""
    from visionattn.ops.blocked.aggregated import _aggregated_blocked_op
    args = _agg_inputs()
    names = ['query', 'key', 'value', 'pool_key', 'pool_value', 'local_bias', 'pool_bias', 'local_weights']
    results = []
    for fn in (aggregated_attention, _aggregated_blocked_op):
        leaf = {k: (v.clone().requires_grad_() if k in names else v) for k, v in args.items()}
        out = fn(**leaf)
        out.square().sum().backward()
        results.append([out] + [leaf[k].grad for k in names])
    for n, a, b in zip(['out'] + names, *results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=n)
    torch.library.opcheck(_aggregated_blocked_op, tuple(args.values()), test_utils=('test_schema', 'test_faketensor'))


SIZE_FIXTURE = Path(__file__).parents[1] / 'fixtures' / 'transnext_size384.safetensors'
# The official classification model built as its fine-tuning and downstream code builds it for another size:
# TransNeXt(img_size=384, pretrain_size=224, num_classes=10, norm_layer=LayerNorm(eps=1e-6), **SIZE_CFG), seeded
# perturbed weights; float64 logits and the four stage maps (outputs of norm1..norm4) on the bilinear 4x upsampling
# of ``input96`` (upsampled in float64: a float32 upsampling rounds differently with the thread count).
SIZE_CFG = dict(FIXTURE_CFG, embed_dims=(8, 16, 24, 32))


@pytest.mark.parametrize('variant', ['transnext_micro', 'transnext_tiny', 'transnext_small', 'transnext_base',
                                     'transnext_small_384', 'transnext_base_384'])
def test_img_size_override_keeps_pretrain_size(variant):
    """The size the weights were pre-trained at stays 224 whatever ``img_size`` says (the 384 fine-tunes too)."""
    model = timm.create_model(variant, pretrained=False, img_size=512, depths=(1, 1, 1, 1), num_classes=0)
    assert model.img_size == (512, 512) and model.pretrain_size == (224, 224)
    assert model.stages[0].blocks[0].attn.pos_cfg.pretrain_size == (56, 56)
    assert timm.create_model('transnext_micro_aaaa', depths=(1, 1, 1, 1), img_size=384).pretrain_size == (256, 256)
    assert TransNeXt(img_size=320, depths=(1, 1, 1, 1)).pretrain_size == (320, 320)  # the official class default


def test_pretrained_at_384_equals_official_built_for_384(tmp_path):
    """``create_model(pretrained=True, img_size=384)`` with 224-pre-trained weights is the official model built with
    ``img_size=384, pretrain_size=224``: float64 logits and stage maps."""
    from safetensors.torch import save_file
    t = load_file(SIZE_FIXTURE)
    weights = tmp_path / 'official.safetensors'
    save_file({k.removeprefix('state_dict.'): v for k, v in t.items() if k.startswith('state_dict.')}, str(weights))
    model = timm.create_model(
        'transnext_micro', pretrained=True, pretrained_cfg_overlay=dict(file=str(weights), num_classes=10),
        num_classes=10, img_size=384, **SIZE_CFG).eval().double()
    assert model.pretrain_size == (224, 224)
    x = F.interpolate(t['input96'].double(), size=(384, 384), mode='bilinear', align_corners=False)
    with torch.no_grad():
        logits = model(x)
        maps = model.forward_intermediates(x, intermediates_only=True)
    for name, out in [('logits', logits)] + [(f'maps{i}', m) for i, m in enumerate(maps)]:
        ref = t[name + '.f64']
        assert out.shape == ref.shape, name
        diff = (out - ref).abs().max().item()
        assert diff <= 1e-10, f'{name}: float64 differs from the official model by {diff}'
