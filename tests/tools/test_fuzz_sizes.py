"""tools/fuzz_sizes.py: its size draws, its verdicts (a failing model is caught, a size-rule ValueError is not a
failure), four shapes on nat_mini in the default tier, and the full fuzz (200 shapes per model) in the slow tier."""

import pytest
import torch

from tools import fuzz_sizes


def test_sizes_cover_primes_and_extreme_ratios():
    hw = fuzz_sizes.sizes(200, seed=0)
    assert len(hw) == 200 and hw == fuzz_sizes.sizes(200, seed=0)
    sides = [s for p in hw for s in p]
    assert min(sides) == 32 and max(sides) == 1024
    assert sum(s in fuzz_sizes.PRIMES for s in sides) >= 40
    assert any(max(h, w) / min(h, w) >= 16 for h, w in hw)


class _Bad(torch.nn.Module):
    def __init__(self, fail):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.fail = fail

    def forward(self, x):
        if self.fail == 'size':
            raise ValueError(f'input height {x.shape[2]} must be divisible by 32')
        if self.fail == 'other':
            raise ValueError('bad things')
        if self.fail == 'nan':
            return x.mean((2, 3)) * self.w * float('nan')
        return x.mean((2, 3)) * self.w


@pytest.mark.parametrize('fail,status', [(None, 'ok'), ('size', 'valueerror'), ('other', 'fail'), ('nan', 'fail')])
def test_verdicts(fail, status):
    assert fuzz_sizes.fuzz_call(_Bad(fail), (33, 47), 2, True, None, False, 0)[0] == status


def test_fuzz_small_model():
    records = fuzz_sizes.fuzz_model('nat_mini', 4, 0, 32, 64, ['fp32'], ['eval', 'train'])
    assert len(records) == 4 and any(r['features'] for r in records)
    assert not [r for r in records if r['status'] == 'fail'], records


@pytest.mark.slow
def test_fuzz_every_model_200_shapes(tmp_path):
    out = tmp_path / 'fuzz.md'
    assert fuzz_sizes.main(['--shapes', '200', '--out', str(out)]) == 0, out.read_text()
