"""The model contract: the checks of timm's tests/test_models.py plus visionattn's own.

Each check takes ``create``, a callable ``create(**kwargs) -> nn.Module`` (``timm.create_model`` bound to a name for
registered models), so the same checks run over every registered visionattn model and over deliberately broken models
in the harness's own tests.
"""
import math
import re
from typing import Callable, Sequence, Tuple

import timm
import torch
import torch.nn as nn
from timm.layers import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

Create = Callable[..., nn.Module]

FWD_SIZE = 96
BWD_SIZE = 64
FEAT_SIZE = 96
# odd, non-square and small inputs: each must run or raise a ValueError naming the size
ODD_SIZES: Sequence[Tuple[int, int]] = ((97, 61), (33, 130), (40, 40), (17, 23))


def _input(size: int, model: nn.Module, batch_size: int = 1) -> torch.Tensor:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    in_chans = cfg.get('input_size', (3,))[0] if cfg else 3
    in_chans = getattr(model, 'in_chans', in_chans)
    if cfg.get('fixed_input_size', False):
        return torch.randn(batch_size, in_chans, *cfg['input_size'][1:])
    return torch.randn(batch_size, in_chans, size, size)


def _cat(out):
    return torch.cat([o.flatten(1) for o in out], 1) if isinstance(out, (tuple, list)) else out


def check_forward(create: Create) -> None:
    """Eval forward: batch kept, no NaN; grad checkpointing gives the same output."""
    torch.manual_seed(0)
    model = create().eval()
    x = _input(FWD_SIZE, model)
    with torch.no_grad():
        out = _cat(model(x))
    assert out.shape[0] == 1
    assert not torch.isnan(out).any(), 'output has NaNs'
    model.set_grad_checkpointing(True)
    with torch.no_grad():
        out2 = _cat(model(x))
    torch.testing.assert_close(out2, out, rtol=1e-4, atol=1e-5, msg='grad checkpointing changes the output')


def _aux_loss_params(model: nn.Module) -> set:
    """Names in ``model.aux_loss_params``: parameters trained only by an auxiliary loss, ``model.aux_loss(x)``
    (e.g. Sparsifiner's connectivity predictor, trained by attention reconstruction; the main output reaches it only
    through a discrete, detached mask). They are exempt from the main-output gradient checks, and
    ``check_backward`` checks instead that ``model.aux_loss(x)`` reaches every one of them."""
    names = set(getattr(model, 'aux_loss_params', ()))
    unknown = names - {n for n, _ in model.named_parameters()}
    assert not unknown, f'aux_loss_params names no parameter: {sorted(unknown)}'
    assert not names or callable(getattr(model, 'aux_loss', None)), 'aux_loss_params without an aux_loss(x) method'
    return names


def check_backward(create: Create) -> None:
    """Train mode, num_classes=42, batch 2: every parameter gets a gradient (parameters listed in
    ``model.aux_loss_params`` from ``model.aux_loss(x)`` instead), no NaN."""
    torch.manual_seed(0)
    model = create(num_classes=42).train()
    aux = _aux_loss_params(model)
    x = _input(BWD_SIZE, model, batch_size=2)
    out = _cat(model(x))
    assert out.shape[-1] == 42, f'output width {out.shape[-1]} != num_classes 42'
    out.mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None and n not in aux]
    assert not no_grad, f'parameters without gradient: {no_grad}'
    assert not torch.isnan(out).any(), 'output has NaNs'
    if aux:
        model.zero_grad(set_to_none=True)
        loss = model.aux_loss(x)
        assert loss.ndim == 0 and torch.isfinite(loss), f'aux_loss must be a finite scalar, got {loss}'
        loss.backward()
        no_grad = [n for n, p in model.named_parameters() if n in aux and p.grad is None]
        assert not no_grad, f'aux_loss_params without gradient from aux_loss: {no_grad}'
    # and with gradient checkpointing, the same gradients
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    torch.manual_seed(0)
    model.eval()  # no dropout / drop path randomness between the two passes
    out_a = _cat(model(x))
    out_a.mean().backward()
    grads_a = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(False)
    _cat(model(x)).mean().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads_a[n], p.grad, rtol=1e-4, atol=1e-6, msg=f'grad checkpointing changes {n}.grad')


def check_low_precision(
        create: Create,
        size: int = BWD_SIZE,
        dtypes: Sequence[torch.dtype] = (torch.bfloat16, torch.float16),
) -> None:
    """Train mode, batch 2, under CPU autocast in each low-precision dtype: forward and cross-entropy backward give a
    finite output and finite gradients (no overflow inside attention; the AMP NaNs of BiFormer/RAVLT's releases)."""
    torch.manual_seed(0)
    model = create(num_classes=42).train()
    x = _input(size, model, batch_size=2)
    target = torch.tensor([1, 2])
    for dtype in dtypes:
        model.zero_grad(set_to_none=True)
        with torch.autocast('cpu', dtype=dtype):
            out = _cat(model(x))
        assert torch.isfinite(out).all(), f'{dtype} autocast at {tuple(x.shape[-2:])}: non-finite output'
        nn.functional.cross_entropy(out.float(), target).backward()
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        assert not bad, f'{dtype} autocast at {tuple(x.shape[-2:])}: non-finite gradients in {bad[:5]}'


def check_default_cfg(create: Create) -> None:
    """num_features/head_hidden_size/pool_size, reset_classifier, first_conv and classifier keys."""
    model = create().eval()
    cfg = model.pretrained_cfg
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    state_dict = model.state_dict()
    for key in ('first_conv', 'classifier'):
        names = cfg[key] if isinstance(cfg[key], (tuple, list)) else (cfg[key],)
        for name in names:
            assert name + '.weight' in state_dict, f'{key} {name!r} is not a parameter prefix'
    for key in ('license', 'paper_ids', 'origin_url'):
        assert cfg.get(key), f'pretrained_cfg lacks {key}'
    x = torch.randn(1, *cfg['input_size'])
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (1, model.head_hidden_size), f'pre_logits {tuple(pre.shape)}'
        pool_size = cfg.get('pool_size')
        if feats.ndim == 4:  # NCHW or NHWC maps
            fmt = getattr(model, 'output_fmt', 'NCHW')
            c_dim, sp = (1, (2, 3)) if fmt == 'NCHW' else (3, (1, 2))
            assert feats.shape[c_dim] == model.num_features
            assert pool_size is not None, 'spatial features but no pool_size in the cfg'
            assert tuple(feats.shape[d] for d in sp) == tuple(pool_size), f'features {tuple(feats.shape)} vs pool_size'
        else:
            assert feats.shape[-1] == model.num_features
        model.reset_classifier(0)
        out = model(x)
        assert out.shape == pre.shape, 'reset_classifier(0) must give pooled features'
        torch.testing.assert_close(out, pre)
        if feats.ndim == 4:
            model.reset_classifier(0, '')
            assert model(x).ndim == 4, "reset_classifier(0, '') must give unpooled maps"
    model = create(num_classes=0).eval()
    with torch.no_grad():
        assert model(x).shape == pre.shape, 'num_classes=0 must give pooled features'
    assert model.get_classifier() is not None
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7
    assert isinstance(model.no_weight_decay(), (set, list, tuple))
    matcher = model.group_matcher()
    assert 'stem' in matcher and 'blocks' in matcher


def _check_maps(outputs, channels, reductions, size: Tuple[int, int], batch_size: int = 1) -> None:
    assert len(outputs) == len(channels), f'{len(outputs)} maps for {len(channels)} feature_info levels'
    for c, r, o in zip(channels, reductions, outputs):
        assert o.ndim == 4 and o.shape[0] == batch_size
        assert o.shape[1] == c, f'map {tuple(o.shape)}: channels != feature_info {c} (NCHW expected)'
        for d, s in zip(o.shape[2:], size):
            assert s / (2 * r) < d <= math.ceil(s / r) + 1, f'map {tuple(o.shape)} does not fit reduction {r}'
        assert not torch.isnan(o).any()


def check_features_only(create: Create) -> None:
    """features_only: >= 3 levels, channels and reductions of feature_info, NCHW."""
    model = create(features_only=True).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) >= 3, 'at least 3 default feature levels'
    assert reductions == sorted(reductions)
    x = _input(FEAT_SIZE, model)
    with torch.no_grad():
        _check_maps(model(x), channels, reductions, tuple(x.shape[2:]))


def check_forward_intermediates(create: Create) -> None:
    """forward_intermediates matches feature_info; its final output equals forward_features."""
    model = create().eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    x = _input(FEAT_SIZE, model)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, output_fmt='NCHW')
        _check_maps(inter, info.channels(), info.reduction(), tuple(x.shape[2:]))
        torch.testing.assert_close(final, model.forward_features(x), rtol=1e-5, atol=1e-8)
        only = model.forward_intermediates(x, indices=[0, len(info) - 1], intermediates_only=True)
        assert len(only) == 2
        torch.testing.assert_close(only[-1], inter[-1])
        model.set_grad_checkpointing(True)
        final2, _ = model.forward_intermediates(x)
        torch.testing.assert_close(final2, final, rtol=1e-4, atol=1e-5)
    kept = model.prune_intermediate_layers(indices=1, prune_norm=True)
    with torch.no_grad():
        pruned = model.forward_intermediates(x, indices=kept, intermediates_only=True)
    torch.testing.assert_close(pruned[-1], inter[-1], rtol=1e-4, atol=1e-5)


def _fx_model(model: nn.Module, train: bool = False) -> nn.Module:
    tracer_kwargs = dict(
        leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(), param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(
        model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs)


def check_fx(create: Create) -> None:
    """FX symbolic trace: forward equals eager, backward reaches every parameter."""
    torch.manual_seed(0)
    model = create().eval()
    x = _input(FWD_SIZE, model)
    with torch.no_grad():
        out = _cat(model(x))
        fx_out = _cat(list(_fx_model(model)(x).values()))
    torch.testing.assert_close(fx_out, out, rtol=1e-4, atol=1e-5)
    model = create(num_classes=42).train()
    aux = _aux_loss_params(model)
    fx = _fx_model(model, train=True)
    out = _cat(list(fx(_input(BWD_SIZE, model, batch_size=2)).values()))
    out.mean().backward()
    no_grad = [n for n, p in fx.named_parameters() if p.grad is None and n not in aux]
    assert not no_grad, f'FX backward: parameters without gradient: {no_grad}'


def check_compile(create: Create, backend: str = 'inductor') -> None:
    """torch.compile(fullgraph=True) traces the model without graph breaks and gives the same output."""
    torch._dynamo.reset()
    # fixed weights: a model with a top-k (Sparsifiner, EViT) is discontinuous at near-ties, which rounding differences
    # of the compiled graph may flip for some random weights
    torch.manual_seed(0)
    model = create().eval()
    x = _input(FWD_SIZE, model)
    with torch.no_grad():
        out = _cat(model(x))
        out_c = _cat(torch.compile(model, fullgraph=True, backend=backend)(x))
    torch.testing.assert_close(out_c, out, rtol=1e-4, atol=1e-4)


def check_input_sizes(create: Create, sizes: Sequence[Tuple[int, int]] = ODD_SIZES) -> None:
    """Odd, non-square and small inputs run (sensible output) or raise a ValueError that names the size."""
    model = create().eval()
    if model.pretrained_cfg.get('fixed_input_size', False):
        return
    in_chans = getattr(model, 'in_chans', 3)
    for h, w in sizes:
        x = torch.randn(1, in_chans, h, w)
        try:
            with torch.no_grad():
                out = _cat(model(x))
                inter = model.forward_intermediates(x, intermediates_only=True)
        except ValueError as e:
            assert re.search(rf'\b({h}|{w})\b', str(e)), f'ValueError for {h}x{w} does not name the size: {e}'
            continue
        except Exception as e:  # noqa: BLE001 - any other failure is the bug this check exists for
            raise AssertionError(
                f'input {h}x{w} raised {type(e).__name__} (expected success or ValueError): {e}') from e
        assert out.shape == (1, model.num_classes) and torch.isfinite(out).all(), f'bad output for {h}x{w}'
        assert all(o.shape[0] == 1 and torch.isfinite(o).all() for o in inter)


def check_wrong_channels(create: Create) -> None:
    """A wrong channel count raises a ValueError that names the channels."""
    model = create().eval()
    in_chans = getattr(model, 'in_chans', 3)
    x = torch.randn(1, in_chans + 2, FWD_SIZE, FWD_SIZE)
    try:
        model(x)
    except ValueError as e:
        assert 'channel' in str(e) and str(in_chans + 2) in str(e), f'unclear error: {e}'
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f'wrong channel count raised {type(e).__name__}, not a ValueError: {e}') from e
    else:
        raise AssertionError(f'{in_chans + 2}-channel input to a {in_chans}-channel model did not raise')
