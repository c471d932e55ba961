"""Sparsifiner: equality with the official code (fixture), the predictor's modes, input sizes, checkpoint loading."""
import logging
import math
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import visionattn  # noqa: F401
from visionattn.models.sparsifiner import Sparsifiner, SparsifinerLoss, checkpoint_filter_fn, resample_token_proj

FIXTURE = Path(__file__).parents[1] / 'fixtures' / 'sparsifiner_model.safetensors'
# the official model of the fixture: models/sparsifiner.Sparsifiner(img_size=64, patch_size=8, num_classes=10,
# embed_dim=32, depth=4, num_heads=2, mlp_ratio=2, reduce_n_factor=4, reduce_c_factor=2, ...) and the official
# default config values (BASIS_THRESHOLD 2e-2, BASIS_COEF top-8, ATTN_SCORE top-k), seeded perturbed weights, run in
# float64 and float32 on a [2, 3, 64, 64] input (the official model is fixed-size). Configurations:
FIXTURE_CFG = dict(img_size=64, patch_size=8, num_classes=10, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2,
                   reduce_n_factor=4, reduce_c_factor=2)
CONFIGS = {
    'sparse': dict(attn_keep_rate=0.25),
    # token pruning at blocks 1, 2 (PRUNE_ATTN_MATRIX_ROW on); block 3's attention budget is capped by the tokens left
    'prune': dict(attn_keep_rate=(0.25, 0.25, 0.6, 0.9), token_pruning_loc=(1, 2), token_keep_rate=(1, .7, .49, .343),
                  prune_attn_rows=True),
    # BASIS_COEF.USE_TOPK False (threshold 5e-2), ATTN_SCORE.USE_TOPK False (threshold 0.08), SHARE_INOUT_PROJ
    'thresh': dict(attn_keep_rate=0.25, basis_topk=None, attn_score_topk=False, attn_score_threshold=0.08,
                   share_inout_proj=True),
}


def _fixture():
    t = load_file(FIXTURE)
    sd = {k.removeprefix('state_dict.'): v for k, v in t.items() if k.startswith('state_dict.')}
    return t, sd


def _model(name, sd, **kwargs):
    model = Sparsifiner(**FIXTURE_CFG, **CONFIGS[name], **kwargs).eval()
    if CONFIGS[name].get('share_inout_proj'):
        sd = {k: v for k, v in sd.items() if not k.endswith('proj_back_n')}
        sd.update({k.replace('proj_n', 'proj_back_n'): v for k, v in sd.items() if k.endswith('proj_n')})
    # an official training dict
    model.load_state_dict(checkpoint_filter_fn({'model': sd, 'epoch': 49}, model), strict=True)
    return model


@pytest.mark.parametrize('fused_attn', [True, False])
@pytest.mark.parametrize('name', list(CONFIGS))
def test_equals_official(name, fused_attn):
    t, sd = _fixture()
    model = _model(name, sd)
    for blk in model.blocks:
        blk.attn.fused_attn = fused_attn
    x = t['input']
    with torch.no_grad():
        out32 = model(x.float())
        model.double()
        out64 = model(x)
        info = model.forward_sparsifiner(x)
    for i, mask in enumerate(info['attn_mask']):  # the same connectivity, compared in float64
        assert torch.equal(mask, t[f'{name}.mask{i}']), f'layer {i}: masks differ'
        if f'{name}.token_mask{i}' in t:
            assert torch.equal(info['token_mask'][i], t[f'{name}.token_mask{i}']), f'layer {i}: token masks differ'
        else:
            assert info['token_mask'][i] is None
    ref64, ref32 = t[f'{name}.logits64'], t[f'{name}.logits32']
    diff64 = (out64 - ref64).abs().max().item()
    assert diff64 <= 1e-10, f'float64 logits differ by {diff64}'
    torch.testing.assert_close(info['logits'], out64, rtol=0, atol=1e-12)
    own = (ref32.double() - ref64).abs().max().item()
    diff32 = (out32.double() - ref64).abs().max().item()
    assert diff32 <= max(2 * own, 1e-5) and diff32 <= 1e-3, f'float32 logits differ by {diff32} (official {own})'


@pytest.mark.parametrize('backend', ['cpu', 'sparse', 'masked_sdpa', 'reference'])
@pytest.mark.parametrize('name', ['sparse', 'prune'])
def test_equals_official_topk_backends(name, backend):
    # the top-k attention computed only over the kept pairs (visionattn.ops.topk_attention) equals the official
    # masked dense attention: float64 logits and, in train mode, gradients of the backbone
    t, sd = _fixture()
    model = _model(name, sd, attn_backend=backend).double()
    x = t['input']
    with torch.no_grad():
        out64 = model(x)
    assert (out64 - t[f'{name}.logits64']).abs().max().item() <= 1e-10
    ref = _model(name, sd, attn_backend='reference').double()
    grads = []
    for m in (model, ref):
        m.zero_grad()
        m(x).square().sum().backward()
        grads.append([p.grad for n, p in m.named_parameters() if p.grad is not None])
    for a, b in zip(*grads):
        assert (a - b).abs().max() <= 1e-9


def test_reconstruction_mode_equals_official():
    # the official first phase: train mode with USE_ATTN_RECON (dense attention, dense coefficients, signed basis)
    t, sd = _fixture()
    model = _model('sparse', sd, attn_recon=True).double().train()
    x = t['input']
    with torch.no_grad():
        out = model.forward_sparsifiner(x)
        loss = model.aux_loss(x)
    assert (out['logits'] - t['recon.logits64']).abs().max() <= 1e-10
    assert (out['approx_attn'][-1][0] - t['recon.approx_attn_last']).abs().max() <= 1e-9
    assert abs(loss.item() - t['recon.loss'].item()) <= 1e-9
    # the dense attention: the same logits as with keep rate 1
    assert all(torch.equal(a, u) for a, u in zip(out['masked_attn'], out['unmasked_attn']))
    # the mode is model state: aux_loss restores it, eval mode runs the sparse attention
    model.set_attn_recon(False)
    with torch.no_grad():
        model.aux_loss(x)
    assert not model.attn_recon and not any(b.attn.attn_recon for b in model.blocks)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), t['sparse.logits64'], rtol=0, atol=1e-10)


def test_mask_budget_and_gradients():
    torch.manual_seed(0)
    model = Sparsifiner(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5).train()
    x = torch.randn(2, 3, 64, 64)
    out = model.forward_sparsifiner(x)
    N = 65
    for mask in out['attn_mask']:
        assert mask.dtype == torch.bool and not mask.requires_grad
        assert mask[:, :, 0].all()  # the class-token row is dense
        assert (mask[:, :, 1:].sum(-1) == math.ceil(0.25 * N)).all()
    # the main loss does not reach the predictor (a detached discrete mask), the reconstruction loss reaches it
    out['logits'].sum().backward()
    aux = set(model.aux_loss_params)
    assert aux and all('.mask_predictor.' in n for n in aux)
    assert all((p.grad is None) == (n in aux) for n, p in model.named_parameters())
    model.zero_grad(set_to_none=True)
    model.aux_loss(x).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(grads[n] is not None for n in aux)
    assert grads['head.weight'] is None  # (q and k upstream do get gradients; the official phase 1 steps only these)
    assert {id(p) for p in model.predictor_parameters()} == {id(p) for n, p in model.named_parameters() if n in aux}


def test_keep_rate_one_equals_timm_deit():
    torch.manual_seed(0)
    ref = timm.create_model('deit_tiny_patch16_224', depth=2, img_size=64, patch_size=8).eval()
    ours = Sparsifiner(img_size=64, patch_size=8, embed_dim=192, depth=2, num_heads=3, attn_keep_rate=1.).eval()
    g = torch.Generator().manual_seed(0)
    sd = {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in ref.state_dict().items()}
    ref.load_state_dict(sd)
    ours.load_state_dict(checkpoint_filter_fn(sd, ours), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
        # the dense teacher of the training recipe is DeiT with the same weights at any keep rate
        sparse = Sparsifiner(img_size=64, patch_size=8, embed_dim=192, depth=2, num_heads=3).eval()
        sparse.load_state_dict(ours.state_dict())
        dense = sparse.forward_dense(x, need_attn=True)
        torch.testing.assert_close(dense['logits'], ref(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dense['features'], ref.forward_features(x)[:, 1:], rtol=1e-5, atol=1e-5)
        assert len(dense['attn']) == 2 and dense['attn'][0].shape == (2, 3, 65, 65)


def test_sparsifiner_loss():
    torch.manual_seed(0)
    model = Sparsifiner(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    loss = SparsifinerLoss()
    with torch.no_grad():
        teacher = model.forward_dense(x, need_attn=True)
    model.set_attn_recon(True)
    student = model.train().forward_sparsifiner(x)
    rec = loss(student, teacher, 'recon')['loss_attn_recon']
    # the official first phase: the teacher's attention, or the student's own while the backbone is unchanged
    torch.testing.assert_close(rec, model.aux_loss(x))
    torch.testing.assert_close(rec, loss(student, {}, 'recon')['loss_attn_recon'])
    model.set_attn_recon(False)
    out = loss(model.forward_distill(x), teacher, 'distill')
    assert set(out) == {'loss_cls_distill', 'loss_token_distill'} and all(v >= -1e-6 for v in out.values())
    with pytest.raises(ValueError, match='phase'):
        loss(student, teacher, 'dense')


def test_other_input_sizes_resample_the_token_projections():
    torch.manual_seed(0)
    model = Sparsifiner(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5).eval()
    proj = model.blocks[0].attn.mask_predictor.proj_n
    assert resample_token_proj(proj, (8, 8), (8, 8)) is proj  # the official model at its own size
    big = resample_token_proj(proj, (16, 12), (8, 8), sum_normalize=True)
    assert big.shape == (1 + 16 * 12, proj.shape[1])
    torch.testing.assert_close(big[0], proj[0])  # the class-token row is kept
    # the token sum K' = k'^T proj_n keeps its scale: the grid rows' mean is that of the training grid, scaled
    torch.testing.assert_close(big[1:].sum(0), proj[1:].sum(0), rtol=0.1, atol=0.02)
    with torch.no_grad():
        out = model.forward_sparsifiner(torch.randn(1, 3, 128, 100))  # a 16 x 13 (padded) grid
    N = 1 + 16 * 13
    assert out['logits'].shape == (1, 5)
    assert (out['attn_mask'][0][:, :, 1:].sum(-1) == math.ceil(0.25 * N)).all()  # the budget follows N
    maps = model.forward_intermediates(torch.randn(1, 3, 128, 100), intermediates_only=True)
    assert maps[-1].shape == (1, 32, 16, 13)


def test_token_pruning_zeroes_tokens_in_place():
    torch.manual_seed(0)
    model = Sparsifiner(img_size=64, patch_size=8, embed_dim=32, depth=4, num_heads=2, token_pruning_loc=(1, 3),
                        token_keep_rate=(1, .5, 1, .25), num_classes=0).eval()
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(2, 3, 64, 64), intermediates_only=True)
    zero = [(m.abs().sum(1) == 0).flatten(1).sum(1).tolist() for m in maps]
    assert zero == [[0, 0], [32, 32], [32, 32], [48, 48]]
    # the reconstruction mode turns pruning off (train and eval), as the official code
    model.set_attn_recon(True)
    with torch.no_grad():
        assert all(m is None for m in model.forward_sparsifiner(torch.randn(1, 3, 64, 64))['token_mask'])


def test_checkpoint_filter_fn_deit_and_official(caplog):
    model = timm.create_model('sparsifiner_deit_small_patch16_224', depth=2, img_size=128, num_classes=10)
    g = torch.Generator().manual_seed(0)
    sd = {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
    # a plain DeiT checkpoint at 224 (no predictor): the predictor keeps the model's own values, with a warning
    deit = timm.create_model('deit_small_patch16_224', depth=2, num_classes=10).state_dict()
    with caplog.at_level(logging.WARNING):
        out = checkpoint_filter_fn({'model': {f'module.{k}': v for k, v in deit.items()}}, model)
    assert 'connectivity-predictor' in caplog.text
    model.load_state_dict(out, strict=True)
    assert out['pos_embed'].shape == (1, 65, 384)
    torch.testing.assert_close(out['blocks.1.attn.mask_predictor.proj_n'],
                               model.state_dict()['blocks.1.attn.mask_predictor.proj_n'])
    # an official training checkpoint at 224 (proj_n [197, 32]) into a 128 model: resampled along the tokens
    official = dict(sd)
    for k in [k for k in sd if k.endswith(('proj_n', 'proj_back_n'))]:
        official[k] = resample_token_proj(sd[k], (14, 14), (8, 8))
    out = checkpoint_filter_fn({'model': official}, model)
    model.load_state_dict(out, strict=True)
    key = 'blocks.0.attn.mask_predictor.proj_n'
    assert out[key].shape == sd[key].shape == (65, 10)
    torch.testing.assert_close(out[key], resample_token_proj(official[key], (8, 8), (14, 14), sum_normalize=True))
    torch.testing.assert_close(out[key][0], sd[key][0])  # the class-token row is kept
    with pytest.raises(ValueError, match='distilled'):
        checkpoint_filter_fn(dict(sd, dist_token=torch.zeros(1, 1, 384)), model)


def test_pretrained_cfg_says_no_sparsifiner_weights():
    cfg = timm.create_model('sparsifiner_deit_base_patch16_224', depth=1, pretrained=False).pretrained_cfg
    assert 'deit_base_patch16_224' in cfg['url'] and 'no Sparsifiner checkpoints' in ' '.join(cfg['notes'])


def test_bad_config():
    with pytest.raises(ValueError, match='basis_topk'):
        Sparsifiner(img_size=96, patch_size=16, embed_dim=32, num_heads=2, depth=1)  # 37 tokens // 6 < 8
    with pytest.raises(ValueError, match='token_pruning_loc'):
        Sparsifiner(depth=4, embed_dim=32, num_heads=2, token_pruning_loc=(3, 6))
    with pytest.raises(ValueError, match='attn_keep_rate'):
        Sparsifiner(depth=1, embed_dim=32, num_heads=2, attn_keep_rate=0.)
    with pytest.raises(ValueError, match='4 entries'):
        Sparsifiner(depth=4, embed_dim=32, num_heads=2, attn_keep_rate=(0.5, 0.5))


def test_pretrained_from_a_deit_file(tmp_path, caplog):
    # the pretrained path with the DeiT weights (served from a local file here): backbone loaded, predictor at init
    deit = timm.create_model('deit_small_patch16_224', depth=2)
    path = tmp_path / 'deit_small_patch16_224-cd65a155.pth'
    torch.save({'model': deit.state_dict()}, path)
    with caplog.at_level(logging.WARNING):
        model = timm.create_model('sparsifiner_deit_small_patch16_224', depth=2, pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(path)))
    assert 'connectivity-predictor' in caplog.text
    torch.testing.assert_close(model.blocks[1].attn.qkv.weight, deit.blocks[1].attn.qkv.weight)
    torch.testing.assert_close(model.pos_embed, deit.pos_embed)
