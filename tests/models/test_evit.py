"""EViT: equality with the official code (fixture), with timm's DeiT, token counts, intermediates, keep-rate hook."""
import math
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import visionattn  # noqa: F401
from visionattn.models.evit import (
    EViT,
    KeepRateScheduler,
    adjust_keep_rate,
    checkpoint_filter_fn,
    reorganize_tokens,
    resample_pos_embed,
)

FIXTURE = Path(__file__).parents[1] / 'fixtures' / 'evit_official.safetensors'
# the official model of the fixture: evit.EViT(img_size=64, patch_size=8, num_classes=10, embed_dim=48, depth=5,
# num_heads=3, keep_rate=(1, .7, 1, .6, .5), fuse_token=...) with seeded perturbed weights, run in float64 and
# float32 at 64x64 and 80x80 (position embedding interpolated by the official code)
FIXTURE_CFG = dict(img_size=64, patch_size=8, num_classes=10, embed_dim=48, depth=5, num_heads=3)


def _fixture():
    t = load_file(FIXTURE)
    sd = {k.removeprefix('state_dict.'): v for k, v in t.items() if k.startswith('state_dict.')}
    return t, sd


def _kept_indices(model, x):
    out = []
    x, _ = model._embed(x)
    for i in range(len(model.blocks)):
        x, idx = model._block(i, x)
        if idx is not None:
            out.append(idx)
    return out


@pytest.mark.parametrize('fused_attn', [True, False])
@pytest.mark.parametrize('fuse', [True, False])
def test_equals_official_evit(fuse, fused_attn):
    t, sd = _fixture()
    name = 'fuse' if fuse else 'nofuse'
    model = EViT(keep_rate=t['config.keep_rate'].tolist(), fuse_token=fuse, **FIXTURE_CFG).eval()
    model.load_state_dict(checkpoint_filter_fn({'model': sd}, model), strict=True)
    for blk in model.blocks:
        blk.attn.fused_attn = fused_attn
    for tag in ('', '_80'):
        x = t['input' + tag]
        with torch.no_grad():
            out32 = model(x)
            model.double()
            out64 = model(x.double())
            idxs = _kept_indices(model, x.double())
            model.float()
        ref64, ref32 = t[f'{name}.logits64{tag}'], t[f'{name}.logits32{tag}']
        assert len(idxs) == 3
        for i, idx in enumerate(idxs):  # the same tokens, in the same (descending attention) order
            assert torch.equal(idx, t[f'{name}.idx{i}{tag}']), f'layer {i}: kept tokens differ'
        diff64 = (out64 - ref64).abs().max().item()
        assert diff64 <= 1e-10, f'float64 logits differ by {diff64}'
        own = (ref32.double() - ref64).abs().max().item()
        diff32 = (out32.double() - ref64).abs().max().item()
        assert diff32 <= max(2 * own, 1e-5) and diff32 <= 1e-4, f'float32 logits differ by {diff32} (official {own})'


def test_keep_rate_one_equals_timm_deit():
    torch.manual_seed(0)
    ref = timm.create_model('deit_tiny_patch16_224', depth=4).eval()
    ours = timm.create_model('evit_deit_tiny_patch16_224', depth=4, drop_loc=(1, 3)).eval()
    g = torch.Generator().manual_seed(0)
    sd = {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in ref.state_dict().items()}
    ref.load_state_dict(sd)
    ours.load_state_dict(checkpoint_filter_fn(sd, ours), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert ours.forward_features(x).shape[1] < 197
        ours.set_keep_rate(1.)
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
        ours.set_keep_rate(None)
        assert ours.keep_rates == (1., .7, 1., .7)


@pytest.mark.parametrize('fuse, counts', [(True, [196, 139, 99, 71]), (False, [196, 138, 97, 68])])
def test_token_counts_deit_s_schedule(fuse, counts):
    # DeiT-S at 224, keep 0.7 at blocks 3, 6, 9 (reduced width: the counts depend only on the schedule)
    model = EViT(embed_dim=24, num_heads=2, depth=12, keep_rate=0.7, fuse_token=fuse, num_classes=0).eval()
    seen = []
    model.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[1] - 1))
    for b in (3, 6, 9):
        model.blocks[b].register_forward_hook(lambda m, i, o: seen.append(o.shape[1] - 1))
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    assert seen == counts


def test_reorganize_tokens_definition():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 5, generator=g, dtype=torch.float64)
    attn = torch.rand(2, 8, generator=g, dtype=torch.float64)
    out, idx = reorganize_tokens(x, attn, 0.5, True)
    assert out.shape == (2, 1 + 4 + 1, 5)
    for b in range(2):
        order = sorted(range(8), key=lambda j: -attn[b, j].item())
        kept, dropped = order[:4], order[4:]
        assert idx[b].tolist() == kept
        torch.testing.assert_close(out[b, 0], x[b, 0])
        torch.testing.assert_close(out[b, 1:5], x[b, 1:][kept])
        fused = sum(attn[b, j] * x[b, 1 + j] for j in dropped)  # weighted sum, not renormalised
        torch.testing.assert_close(out[b, 5], fused)
    out, idx = reorganize_tokens(x, attn, 0.99, True)  # ceil(0.99 * 8) = 8: nothing dropped, nothing fused
    assert idx is None and out is x


def test_intermediates_fill_dropped_positions_with_last_value():
    torch.manual_seed(0)
    model = EViT(img_size=64, patch_size=8, embed_dim=24, num_heads=2, depth=4, keep_rate=(1, .5, 1, .5),
                 num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        # replay block by block and build the expected canvas
        t, _ = model._embed(x)
        pos = torch.arange(64).expand(2, -1)
        expected = []
        canvas = None
        for blk in model.blocks:
            t, idx = blk(t, True)
            if idx is not None:
                pos = torch.cat([torch.gather(pos, 1, idx), torch.full((2, 1), -1)], 1)  # fused token last
            if canvas is None:
                canvas = t[:, 1:].clone()
            else:
                for b in range(2):
                    for j, p in enumerate(pos[b].tolist()):
                        if p >= 0:
                            canvas[b, p] = t[b, 1 + j]
            expected.append(canvas.clone())
    for m, e in zip(maps, expected):
        assert m.shape == (2, 24, 8, 8)
        torch.testing.assert_close(m.flatten(2).transpose(1, 2), e)
    assert not torch.equal(maps[1], maps[0])


def test_features_only_non_square():
    model = timm.create_model('evit_deit_tiny_patch16_224', depth=5, drop_loc=(1, 3), features_only=True,
                              out_indices=(0, 2, 4)).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 100, 230))  # padded to 112 x 240: a 7 x 15 grid
    assert [tuple(f.shape) for f in feats] == [(1, 192, 7, 15)] * 3


def test_adjust_keep_rate_schedule():
    # the official helpers.adjust_keep_rate: 1 before the start, cosine to base over the shrink epochs, then base
    kw = dict(warmup_epochs=2, total_epochs=6, iters_per_epoch=10, base_keep_rate=0.7)
    assert adjust_keep_rate(15, 1, **kw) == 1
    assert adjust_keep_rate(20, 2, **kw) == pytest.approx(1.)
    assert adjust_keep_rate(40, 4, **kw) == pytest.approx(0.85)
    assert adjust_keep_rate(50, 5, **kw) == pytest.approx(0.7 + 0.3 * (math.cos(0.75 * math.pi) + 1) / 2)
    assert adjust_keep_rate(60, 6, **kw) == 0.7
    model = EViT(embed_dim=24, num_heads=2, depth=12, keep_rate=0.7, num_classes=0)
    sched = KeepRateScheduler(model, shrink_start_epoch=2, shrink_epochs=4, iters_per_epoch=10)
    assert sched.base_keep_rate == 0.7
    assert sched.step(0) == 1 and model.keep_rates == (1.,) * 12
    assert sched.step(4, 0) == pytest.approx(0.85)
    assert model.keep_rates[3] == pytest.approx(0.85) and model.keep_rates[4] == 1.
    sched.step(9)
    assert model.keep_rates == (1., 1., 1., .7, 1., 1., .7, 1., 1., .7, 1., 1.)
    with pytest.raises(ValueError, match='reorganizing'):
        model.set_keep_rate([0.5, 0.5])


def test_checkpoint_filter_fn_formats():
    model = timm.create_model('evit_deit_tiny_patch16_224', depth=2, drop_loc=(1,), img_size=96)
    g = torch.Generator().manual_seed(0)
    sd = {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
    # an official training dict at 224 (14 x 14 grid) with a DataParallel prefix and a linear patch embedding
    pos224 = resample_pos_embed(sd['pos_embed'], (14, 14), (6, 6))
    wrapped = {'model': {f'module.{k}': v for k, v in dict(sd, pos_embed=pos224).items()}, 'epoch': 3}
    wrapped['model']['module.patch_embed.proj.weight'] = sd['patch_embed.proj.weight'].flatten(1)
    out = checkpoint_filter_fn(wrapped, model)
    model.load_state_dict(out, strict=True)
    assert out['pos_embed'].shape == (1, 37, 192)
    torch.testing.assert_close(out['patch_embed.proj.weight'], sd['patch_embed.proj.weight'])
    with pytest.raises(ValueError, match='distilled'):
        checkpoint_filter_fn(dict(sd, dist_token=torch.zeros(1, 1, 192)), model)


def test_pretrained_tags():
    m = timm.create_model('evit_deit_small_patch16_224.keep05_nofuse_in1k', depth=4, drop_loc=(3,))
    assert m.keep_rates[3] == 0.5 and not m.fuse_token
    m = timm.create_model(
        'evit_deit_small_patch16_224.keep09_fuse_in1k', keep_rate=0.6, depth=4, drop_loc=(3,))
    assert m.keep_rates[3] == 0.6 and m.fuse_token  # explicit kwargs win over the tag
    m = timm.create_model('evit_deit_small_patch16_224', depth=4, drop_loc=(3,))
    assert m.pretrained_cfg['tag'] == 'keep07_fuse_in1k'
    with pytest.raises(RuntimeError, match='Google Drive'):
        timm.create_model('evit_deit_small_patch16_224', pretrained=True, depth=4, drop_loc=(3,))


def test_bad_config():
    with pytest.raises(ValueError, match='drop_loc'):
        EViT(depth=4, drop_loc=(3, 6))
    with pytest.raises(ValueError, match='keep_rate'):
        EViT(depth=2, keep_rate=(1, 0.))


def test_set_tokens_absolute_counts():
    # the official `tokens` argument: an absolute number of kept tokens per block, overriding the keep rate
    torch.manual_seed(0)
    model = EViT(img_size=64, patch_size=8, embed_dim=24, num_heads=2, depth=4, keep_rate=0.7, drop_loc=(1, 3),
                 num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        model.set_tokens([None, 45, None, 33])  # = ceil(0.7 * 64) and ceil(0.7 * (45 + 1 fused))
        torch.testing.assert_close(model(x), ref)
        model.set_tokens([20, None, None, None])  # block 0 (keep rate 1) reorganizes too, as the official code
        seen = []
        hooks = [b.register_forward_hook(lambda m, i, o: seen.append(o.shape[1] - 1)) for b in model.blocks]
        model(x)
        assert seen == [21, 16, 16, 13]  # 20 kept + 1 fused, then ceil(0.7 * 21) + 1, ceil(0.7 * 16) + 1
        model.set_tokens(21)  # a scalar applies to every block: 21 of 21 is a no-op after the first
        seen.clear()
        model(x)
        assert seen == [22, 22, 22, 22]
        for h in hooks:
            h.remove()
        model.set_tokens(None)
        torch.testing.assert_close(model(x), ref)
        model.set_tokens([None, 65, None, None])
        with pytest.raises(ValueError, match='cannot keep 65 of 64'):
            model(x)
    with pytest.raises(ValueError, match='4 blocks'):
        model.set_tokens([1, 2])
