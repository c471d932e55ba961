"""CpuBf16SafeConv2d: torch's CPU bfloat16 strided convolution gives wrong values (often non-finite) on outputs one
column wide (seen on an AMX / AVX512-BF16 Xeon, torch 2.14, found by tools/fuzz_sizes.py on agent_cswin_tiny and
transnext_micro at 32-pixel-wide inputs); the guarded conv computes those in float32. Where torch has no such bug
the tests pass either way."""
import pytest
import timm
import torch
import torch.nn as nn

import visionattn  # noqa: F401  (registers the models)
from visionattn.layers import CpuBf16SafeConv2d, guard_cpu_bf16_convs

# (in, out, kernel, stride, padding, input (H, W)): outputs (8, 1), (3, 1), (8, 1); wrong on the machine above
CASES = [(64, 128, 3, 2, 1, (16, 2)), (256, 512, 3, 2, 1, (6, 2)), (3, 64, 4, 4, 0, (32, 4))]


@pytest.mark.parametrize('cin,cout,k,s,p,hw', CASES)
@pytest.mark.parametrize('batch', [1, 3])
def test_one_column_output_matches_float32(cin, cout, k, s, p, hw, batch):
    torch.manual_seed(0)
    conv = guard_cpu_bf16_convs(nn.Sequential(nn.Conv2d(cin, cout, k, s, p)))[0]
    assert type(conv) is CpuBf16SafeConv2d
    x = torch.randn(batch, cin, *hw, requires_grad=True)
    ref = conv(x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = conv(x)
    (g,) = torch.autograd.grad(y.float().sum(), x)
    assert y.dtype == torch.bfloat16 and y.shape[-1] == 1
    torch.testing.assert_close(y.float(), ref, atol=0.05, rtol=0.05)
    torch.testing.assert_close(g, g_ref, atol=0.05, rtol=0.05)
    # bfloat16 weights and input without autocast take the same fallback
    conv_bf16 = guard_cpu_bf16_convs(nn.Sequential(nn.Conv2d(cin, cout, k, s, p)))[0]
    conv_bf16.load_state_dict(conv.state_dict())
    y2 = conv_bf16.bfloat16()(x.detach().bfloat16())
    assert y2.dtype == torch.bfloat16
    torch.testing.assert_close(y2.float(), ref.detach(), atol=0.06, rtol=0.06)


def test_guard_swaps_only_strided_convs_and_keeps_the_state_dict():
    m = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1), nn.Conv2d(8, 16, 3, 2, 1), nn.Conv2d(16, 16, 3, 1, 1, groups=16),
                      nn.Conv2d(16, 16, (1, 2), (1, 2)))
    keys = list(m.state_dict())
    x = torch.randn(1, 8, 12, 10)
    ref = m(x)
    guard_cpu_bf16_convs(m)
    assert [type(c) for c in m] == [nn.Conv2d, CpuBf16SafeConv2d, nn.Conv2d, CpuBf16SafeConv2d]
    assert list(m.state_dict()) == keys
    assert torch.equal(m(x), ref)  # float32: the same computation


# hierarchical families (smallest variants): their last downsampling sees a 1-column map on a 32-pixel-wide input
@pytest.mark.parametrize('name', ['agent_cswin_tiny', 'nat_mini', 'transnext_micro', 'biformer_tiny'])
def test_models_last_stage_under_cpu_bf16_on_narrow_input(name):
    torch.manual_seed(0)
    m = timm.create_model(name, features_only=True).eval()
    assert any(type(c) is CpuBf16SafeConv2d for c in m.modules())
    x = torch.randn(3, 3, 96, 32)
    with torch.no_grad():
        ref = m(x)[-1]
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y = m(x)[-1].float()
    assert ref.shape[-1] == 1
    # 0.01 to 0.014 measured with the guard; about 1.1 (garbage) without it on the machine above
    assert ((y - ref).norm() / ref.norm()).item() < 0.05
