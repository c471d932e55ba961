"""The model contract over every registered visionattn model (new families are checked without new tests)."""
import functools

import pytest
import timm
import torch
from timm.models._registry import _model_entrypoints, _model_to_module

import visionattn

from . import contract

MODELS = visionattn.list_models()
# The first registered variant of each family (families register smallest first) runs every check in the default
# tier; the larger variants (up to 200M parameters at 384) run a forward there and every check in the slow tier.
_order = {n: i for i, n in enumerate(_model_entrypoints)}
SMALLEST = {
    min((n for n in MODELS if _model_to_module[n] == m), key=_order.get) for m in {_model_to_module[n] for n in MODELS}}
TIERED = [n if n in SMALLEST else pytest.param(n, marks=pytest.mark.slow) for n in MODELS]


def _create(name):
    return functools.partial(timm.create_model, name)


def test_every_family_registers_models():
    modules = visionattn.models.model_modules()
    assert modules, 'no family modules found'
    for module in modules:
        assert timm.list_models(module=module), f'visionattn.models.{module} registers no model (not imported?)'
    assert set(MODELS) == set(timm.list_models(module=modules))


def test_names_do_not_collide_with_timm():
    # our modules are imported, so a name that timm also defines would have been overwritten in timm's registry
    for name in MODELS:
        assert _model_to_module[name] in visionattn.models.model_modules()
    timm_names = {n for n, m in _model_to_module.items() if m not in visionattn.models.model_modules()}
    assert not set(MODELS) & timm_names


@pytest.mark.parametrize('name', MODELS)
def test_forward(name):
    contract.check_forward(_create(name))


@pytest.mark.parametrize('name', TIERED)
def test_backward(name):
    contract.check_backward(_create(name))


@pytest.mark.parametrize('name', TIERED)
def test_low_precision(name):
    # fp16 is the dtype that overflows (bf16 has float32's range): the default tier checks it; both under slow
    contract.check_low_precision(_create(name), dtypes=(torch.float16,))


# fp16/bf16 at the training size and at 512 (dense-prediction sizes): CPU fp16 is slow (BiFormer-B at 512 took over
# 15 minutes on 2 shared cores), so slow tier only, with a long timeout
@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize('size', [224, 512])
@pytest.mark.parametrize('name', MODELS)
def test_low_precision_large(name, size):
    contract.check_low_precision(_create(name), size=size)


@pytest.mark.parametrize('name', TIERED)
def test_default_cfg(name):
    contract.check_default_cfg(_create(name))


@pytest.mark.parametrize('name', TIERED)
def test_features_only(name):
    contract.check_features_only(_create(name))


@pytest.mark.parametrize('name', TIERED)
def test_forward_intermediates(name):
    contract.check_forward_intermediates(_create(name))


@pytest.mark.parametrize('name', TIERED)
def test_fx(name):
    contract.check_fx(_create(name))


@pytest.mark.parametrize('name', TIERED)
def test_compile(name):
    # dynamo traces the whole model (fullgraph) through AOT autograd; inductor code generation is in test_inductor
    contract.check_compile(_create(name), backend='aot_eager')


# Inductor code generation of a whole model takes minutes per family on a 2-core CPU (measured 2026-11-22: 3.5-6 min
# for BiFormer/LITv2/TransNeXt under load), so the default tier compiles two families, one of them through the GNA
# custom op; every family compiles in the slow tier (and under aot_eager, fullgraph, in test_compile by default).
INDUCTOR_DEFAULT = {'va_convit_tiny', 'nat_mini'}


@pytest.mark.parametrize('name', [
    n if n in INDUCTOR_DEFAULT else pytest.param(n, marks=pytest.mark.slow) for n in MODELS])
def test_inductor(name):
    contract.check_compile(_create(name), backend='inductor')


@pytest.mark.parametrize('name', TIERED)
def test_input_sizes(name):
    contract.check_input_sizes(_create(name))


@pytest.mark.parametrize('name', TIERED)
def test_wrong_channels(name):
    contract.check_wrong_channels(_create(name))
