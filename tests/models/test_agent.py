"""Agent Attention hosts: equality with the official code (fixtures), the shared op and layer, any input size."""
import functools
import json
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

import visionattn  # noqa: F401
from visionattn.layers import AgentAttention
from visionattn.models import agent as agent_models
from visionattn.models.agent import checkpoint_filter_fn
from visionattn.ops import agent_attention, agent_attention_reference

from . import contract

FIXTURES = Path(__file__).parents[1] / 'fixtures'


def _fixture(name):
    path = FIXTURES / f'agent_{name}.safetensors'
    t = load_file(path)
    with safe_open(path, 'pt') as f:
        cfg = json.loads(f.metadata()['config'])
    sd = {k.removeprefix('sd.'): v for k, v in t.items() if k.startswith('sd.')}
    return t, sd, cfg


def _run(model, x, modules):
    feats = {}
    hooks = [m.register_forward_hook(lambda mod, i, out, k=k: feats.__setitem__(k, out)) for k, m in modules.items()]
    with torch.no_grad():
        out = model(x)
    for h in hooks:
        h.remove()
    return out, feats


def _assert_close(ours64, ours32, t, key):
    ref64, ref32 = t[f'{key}.f64'], t[f'{key}.f32']
    assert ours64.shape == ref64.shape, f'{key}: shape {tuple(ours64.shape)} != official {tuple(ref64.shape)}'
    diff64 = (ours64 - ref64).abs().max().item()
    assert diff64 <= 1e-10, f'{key}: float64 differs from the official by {diff64}'
    own = (ref32.double() - ref64).abs().max().item()
    diff32 = (ours32.double() - ref64).abs().max().item()
    assert diff32 <= max(2 * own, 1e-5) and diff32 <= 1e-3, f'{key}: float32 differs by {diff32} (official {own})'


def _check_official(model, t, sd, prefix, x, modules_fn, feat_fn=lambda f: f):
    model.load_state_dict(checkpoint_filter_fn({'model': sd, 'epoch': 3}, model), strict=True)
    model.eval()
    out32, f32 = _run(model.float(), x.float(), modules_fn(model))
    out64, f64 = _run(model.double(), x.double(), modules_fn(model))
    outs64 = out64 if isinstance(out64, (list, tuple)) else [out64]
    outs32 = out32 if isinstance(out32, (list, tuple)) else [out32]
    for i, (a, b) in enumerate(zip(outs64, outs32)):
        _assert_close(a, b, t, f'{prefix}.out{i}')
    for k in f64:
        _assert_close(feat_fn(f64[k]), feat_fn(f32[k]), t, f'{prefix}.{k}')


# ---------------------------------------------------------------------------------------------------------------- op


def test_op_equals_reference():
    g = torch.Generator().manual_seed(0)
    B, h, N, M, n, d = 2, 3, 20, 20, 4, 8
    q, k, v = (torch.randn(B, h, x, d, generator=g, dtype=torch.float64) for x in (N, M, M))
    a = torch.randn(B, h, n, d, generator=g, dtype=torch.float64)
    ba, bq = torch.randn(h, n, M, generator=g, dtype=torch.float64), torch.randn(h, N, n, generator=g,
                                                                                 dtype=torch.float64)
    ref = agent_attention_reference(q, k, v, a, ba, bq, d ** -0.5)
    torch.testing.assert_close(agent_attention(q, k, v, a, ba, bq, d ** -0.5), ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(agent_attention(q, k, v, a, None, None, 0.3),
                               agent_attention_reference(q, k, v, a, None, None, 0.3), rtol=0, atol=1e-12)


def test_layer_bias_cache():
    torch.manual_seed(0)
    layer = AgentAttention(16, 2, window_size=6, agent_num=4).eval()
    x = torch.randn(1, 36, 16)
    with torch.no_grad():
        y1 = layer(x, (6, 6))
        assert (6, 6) in layer._bias_cache
        y2 = layer(x, (6, 6))
        layer.an_bias.add_(0.5)  # an in-place update (optimizer step, load_state_dict) invalidates the cache
        y3 = layer(x, (6, 6))
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    assert not torch.allclose(y1, y3)
    y4 = layer(x, (6, 6))  # with grad: recomputed, equal, differentiable
    torch.testing.assert_close(y4, y3)
    y4.sum().backward()
    assert layer.an_bias.grad is not None and layer.an_bias.grad.abs().sum() > 0


def test_layer_agent_shape_resizes_biases():
    layer = AgentAttention(16, 2, window_size=7, agent_num=9, agent_shape=(4, 5))
    ab, qb = layer.compute_biases((10, 11))
    assert ab.shape == (2, 20, 110) and qb.shape == (2, 110, 20)
    same = AgentAttention(16, 2, window_size=7, agent_num=9)
    same.load_state_dict(layer.state_dict())
    ab, qb = same.compute_biases((7, 7))  # the training grid: the official classification biases, unresized
    an = torch.nn.functional.interpolate(layer.an_bias, size=(7, 7), mode='bilinear')
    torch.testing.assert_close(ab, (an + layer.ah_bias[0] + layer.aw_bias[0]).flatten(2), rtol=0, atol=1e-7)


def test_layer_rejects_non_square_agent_num():
    with pytest.raises(ValueError, match='10'):
        AgentAttention(16, 2, window_size=7, agent_num=10)


# ------------------------------------------------------------------------------------------------------------ DeiT


def test_deit_equals_official():
    t, sd, cfg = _fixture('deit')
    model = agent_models.AgentDeiT(**cfg)
    _check_official(model, t, sd, 'cls', t['x'], lambda m: {f'block{i}': b for i, b in enumerate(m.blocks)})


def test_deit_structure():
    m = timm.create_model('agent_deit_base', pretrained=False)
    assert [b.agent for b in m.blocks] == [True] * 4 + [False] * 8
    assert m.blocks[0].attn.agent_num == 81 and m.blocks[0].attn.ah_bias.shape == (1, 12, 81, 14, 1)
    m = timm.create_model('agent_deit_small_448', depth=1)
    assert m.blocks[0].attn.ah_bias.shape == (1, 6, 49, 28, 1)


def test_deit_any_size_and_features():
    m = timm.create_model('agent_deit_tiny', depth=2, num_classes=5).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 97, 61)).shape == (1, 5)
        feats = timm.create_model('agent_deit_tiny', depth=3, features_only=True, out_indices=(0, 2)).eval()(
            torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 192, 4, 6)] * 2


# ------------------------------------------------------------------------------------------------------------- PVT


def _official_arch(cfg, *drop):
    return {k: v for k, v in cfg.items() if k not in drop}


def test_pvt_equals_official():
    t, sd, cfg = _fixture('pvt')
    model = agent_models.AgentPVT(**_official_arch(cfg, 'mm_agent_shapes'))
    _check_official(model, t, sd, 'cls', t['x'], lambda m: {f'stage{i}': s.blocks[-1] for i, s in enumerate(m.stages)})


def test_pvt_equals_official_downstream_backbone():
    """The official mm backbone at 96x64 (not the training size) with more agents than in the checkpoint."""
    t, sd, cfg = _fixture('pvt')
    shapes = cfg['mm_agent_shapes']
    model = agent_models.AgentPVT(**_official_arch(cfg, 'mm_agent_shapes'), agent_shapes=shapes)
    model.load_state_dict(checkpoint_filter_fn(sd, model), strict=True)
    model.eval()
    x = t['x_mm']
    with torch.no_grad():
        f32 = model.forward_intermediates(x.float(), intermediates_only=True)
        f64 = model.double().forward_intermediates(x.double(), intermediates_only=True)
    assert model.stages[1].blocks[0].attn.compute_biases((12, 8))[0].shape == (2, 6, 96)
    for i, (a, b) in enumerate(zip(f64, f32)):
        _assert_close(a, b, t, f'mm.out{i}')


def test_pvt_odd_sizes_pad():
    m = timm.create_model('agent_pvt_tiny', embed_dims=(16, 16, 16, 16), num_heads=(1, 1, 1, 1),
                          depths=(1, 1, 1, 1), num_classes=3).eval()
    with torch.no_grad():
        feats = m.forward_intermediates(torch.randn(1, 3, 17, 23), intermediates_only=True)
    assert [tuple(f.shape[2:]) for f in feats] == [(5, 6), (3, 3), (2, 2), (1, 1)]


# ------------------------------------------------------------------------------------------------------------ Swin


def test_swin_equals_official():
    t, sd, cfg = _fixture('swin')
    model = agent_models.AgentSwin(**_official_arch(cfg, 'mm_agent_shapes'))
    _check_official(model, t, sd, 'cls', t['x'], lambda m: {f'stage{i}': m.stages[i].blocks[-1] for i in (2, 3)})


def test_swin_equals_official_downstream_backbone():
    """The official mm backbone at 32x56 (padded, shifted "B" windows on small maps) with more agents."""
    t, sd, cfg = _fixture('swin')
    model = agent_models.AgentSwin(
        **_official_arch(cfg, 'mm_agent_shapes'), agent_shapes=cfg['mm_agent_shapes'], window_clamp=False)
    model.load_state_dict(checkpoint_filter_fn(sd, model), strict=True)
    model.eval()
    x = t['x_mm']
    with torch.no_grad():
        f32 = model.forward_intermediates(x.float(), intermediates_only=True)
        f64 = model.double().forward_intermediates(x.double(), intermediates_only=True)
    for i, (a, b) in enumerate(zip(f64, f32)):
        _assert_close(a, b, t, f'mm.out{i}')


def test_swin_block_pattern():
    m = timm.create_model('agent_swin_base', embed_dim=32, num_heads=(1, 1, 1, 1))
    kinds = [''.join('A' if isinstance(b.attn, AgentAttention) else 'B' for b in s.blocks) for s in m.stages]
    assert kinds == ['AA', 'AA', 'AA' + 'B' * 16, 'BB']
    assert m.stages[2].blocks[3].shift_size == 3 and m.stages[2].blocks[2].shift_size == 0
    m = timm.create_model('agent_swin_small_288', embed_dim=32, num_heads=(1, 1, 1, 1), depths=(1, 1, 2, 2))
    assert m.stages[0].blocks[0].attn.ah_bias.shape == (1, 1, 9, 72, 1) and m.stages[2].blocks[1].window_size == 9
    with pytest.raises(ValueError, match='attn_type'):
        agent_models.AgentSwin(attn_type='AXAB')


# ----------------------------------------------------------------------------------------------------------- CSwin


def test_cswin_equals_official():
    t, sd, cfg = _fixture('cswin')
    model = agent_models.AgentCSwin(**cfg)
    _check_official(model, t, sd, 'cls', t['x'], lambda m: {f'stage{i}': s.blocks[-1] for i, s in enumerate(m.stages)})


def test_cswin_structure_and_padded_stripes():
    m = timm.create_model('agent_cswin_tiny', embed_dim=16, num_heads=(2, 2, 2, 2), depths=(1, 1, 2, 1)).eval()
    assert [len(s.blocks[0].attns) for s in m.stages] == [1, 1, 2, 1]
    assert isinstance(m.stages[1].blocks[0].attns[0], AgentAttention)
    assert m.stages[0].blocks[0].attns[0].ah_bias.shape == (1, 2, 9, 56, 1)
    # stripes padded on a map not divisible by the stripe width equal the unpadded computation on a divisible crop
    blk = m.stages[2].blocks[0]
    x = torch.randn(1, 15 * 9, 64)
    with torch.no_grad():
        y = blk(x, (15, 9))
    assert y.shape == x.shape and torch.isfinite(y).all()


# ---------------------------------------------------------------------------------------------- contract, all hosts

# the harness (test_contract.py) runs every check on the first registered variant of this module (agent_deit_tiny)
# only; the other hosts run them here at reduced width (same code paths), torch.compile in the slow tier
REDUCED = {
    'agent_pvt_tiny': dict(embed_dims=(16, 32, 32, 48), num_heads=(1, 2, 2, 2), depths=(1, 1, 1, 1)),
    'agent_swin_tiny': dict(embed_dim=16, num_heads=(1, 2, 2, 4), depths=(1, 1, 2, 2)),
    'agent_swin_base': dict(embed_dim=16, num_heads=(1, 2, 2, 4), depths=(1, 1, 3, 2)),
    'agent_cswin_tiny': dict(embed_dim=16, num_heads=(2, 2, 2, 2), depths=(1, 1, 2, 1)),
}
CHECKS = ['forward', 'backward', 'default_cfg', 'features_only', 'forward_intermediates', 'fx', 'input_sizes',
          'wrong_channels']


@pytest.mark.parametrize('check', CHECKS)
@pytest.mark.parametrize('name', list(REDUCED))
def test_contract_reduced_hosts(name, check):
    getattr(contract, f'check_{check}')(functools.partial(timm.create_model, name, **REDUCED[name]))


@pytest.mark.slow
@pytest.mark.parametrize('name', list(REDUCED))
def test_compile_reduced_hosts(name):
    contract.check_compile(functools.partial(timm.create_model, name, **REDUCED[name]))


def test_filter_resizes_grid_biases_for_a_new_training_size():
    kw = dict(embed_dim=16, num_heads=(1, 1, 1, 1), depths=(1, 1, 1, 1))
    src = timm.create_model('agent_swin_tiny', **kw)
    dst = timm.create_model('agent_swin_tiny', img_size=288, **kw)
    dst.load_state_dict(checkpoint_filter_fn({'model': src.state_dict()}, dst), strict=True)
    assert dst.stages[0].blocks[0].attn.ha_bias.shape == (1, 1, 72, 1, 9)
    src = timm.create_model('agent_pvt_tiny', embed_dims=(16, 16, 16, 16), num_heads=(1, 1, 1, 1), depths=(1, 1, 1, 1))
    dst = timm.create_model('agent_pvt_tiny', img_size=256, embed_dims=(16, 16, 16, 16), num_heads=(1, 1, 1, 1),
                            depths=(1, 1, 1, 1))
    dst.load_state_dict(checkpoint_filter_fn(src.state_dict(), dst), strict=True)
    assert dst.stages[0].pos_embed.shape == (1, 64 * 64, 16)


@pytest.mark.parametrize('name', list(REDUCED))
def test_group_matcher_groups_every_parameter(name):
    from timm.models import group_parameters
    m = timm.create_model(name, **REDUCED[name])
    for coarse in (False, True):
        groups = group_parameters(m, m.group_matcher(coarse))
        assert sum(len(g) for g in groups.values()) == len(list(m.parameters()))
        assert groups[0][0].startswith(('stem', 'patch_embed', 'stages.0.'))


def test_pretrained_from_a_local_training_dict(tmp_path):
    kw = REDUCED['agent_cswin_tiny']
    src = timm.create_model('agent_cswin_tiny', **kw)
    # the official container layout: weights under 'model', plus training state
    official = {k.replace('stem.conv.', 'stage1_conv_embed.0.').replace('stem.norm.', 'stage1_conv_embed.2.'): v
                for k, v in src.state_dict().items()}
    path = tmp_path / 'agent_cswin_t_max_acc.pth'
    torch.save({'model': official, 'epoch': 299, 'max_accuracy': 83.1}, path)
    m = timm.create_model('agent_cswin_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kw)
    torch.testing.assert_close(m.stem.conv.weight, src.stem.conv.weight)
    torch.testing.assert_close(m.stages[0].blocks[0].attns[0].dwc.weight, src.stages[0].blocks[0].attns[0].dwc.weight)


def _official_finetune_resize(k, pretrained, current_shape):
    """``agent_transformer/utils.py::load_pretrained`` of the official repository (fine-tuning at another size):
    linear interpolation of the per-row/column agent biases along their grid axis."""
    squeeze_dim, permute = {'ah_bias': (-1, False), 'aw_bias': (-2, False), 'ha_bias': (-2, True),
                            'wa_bias': (-3, True)}[k.rsplit('.', 1)[-1]]
    b = pretrained.squeeze(0).squeeze(squeeze_dim)
    cur = torch.zeros(current_shape).squeeze(0).squeeze(squeeze_dim)
    if permute:
        b, cur = b.permute(0, 2, 1), cur.permute(0, 2, 1)
    b = F.interpolate(b, size=cur.shape[-1], mode='linear')
    if permute:
        b = b.permute(0, 2, 1)
    return b.unsqueeze(0).unsqueeze(squeeze_dim)


@pytest.mark.parametrize('name', ['agent_swin_tiny', 'agent_pvt_tiny'])
def test_pretrained_at_another_img_size_resizes_biases_as_official_finetune(name, tmp_path):
    """``create_model(pretrained=True, img_size=288)`` with 224 weights: the agent biases and position embeddings are
    those of the official fine-tuning loader (linear / bicubic resize), the grid-free tensors unchanged."""
    from safetensors.torch import save_file
    kw = dict(embed_dim=16, num_heads=(1, 1, 1, 1), depths=(1, 1, 1, 1)) if 'swin' in name else dict(
        embed_dims=(16, 16, 16, 16), num_heads=(1, 1, 1, 1), depths=(1, 1, 1, 1))
    torch.manual_seed(0)
    src = timm.create_model(name, **kw)
    sd = {k: v + 0.1 * torch.randn_like(v) for k, v in src.state_dict().items()}
    path = tmp_path / 'w.safetensors'
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    dst = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), img_size=288, **kw)
    checked = 0
    for k, v in dst.state_dict().items():
        if k.endswith(('ah_bias', 'aw_bias', 'ha_bias', 'wa_bias')) and v.shape != sd[k].shape:
            torch.testing.assert_close(v, _official_finetune_resize(k, sd[k], v.shape), rtol=0, atol=1e-6, msg=k)
            checked += 1
        elif k.endswith('pos_embed') and v.shape != sd[k].shape:  # official: bicubic on the square grid
            s1, s2 = math.isqrt(sd[k].shape[1]), math.isqrt(v.shape[1])
            grid = sd[k].reshape(1, s1, s1, -1).permute(0, 3, 1, 2)
            ref = F.interpolate(grid, size=(s2, s2), mode='bicubic').permute(0, 2, 3, 1).flatten(1, 2)
            torch.testing.assert_close(v, ref, rtol=0, atol=1e-6, msg=k)
            checked += 1
        elif k in sd and v.shape == sd[k].shape:
            torch.testing.assert_close(v, sd[k], rtol=0, atol=0, msg=k)
    assert checked >= 4
