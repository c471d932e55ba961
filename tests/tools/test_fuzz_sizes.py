"""tools/fuzz_sizes.py: its size draws, its verdicts (a failing model is caught, a size-rule ValueError is not a
failure, finite garbage under autocast is caught by the precision check), six shapes (32..64, fp32/bf16/fp16, eval
and train) on the smallest model of every family in the default tier, and 200 shapes on every model in the slow
tier (hours per model on one core: run one with ``-k``)."""

import pytest
import torch

import visionattn
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
        if self.fail == 'garbage' and torch.is_autocast_enabled('cpu'):
            return x.mean((2, 3)) * self.w + 1.0  # finite, wrong
        return x.mean((2, 3)) * self.w


@pytest.mark.parametrize('fail,status', [(None, 'ok'), ('size', 'valueerror'), ('other', 'fail'), ('nan', 'fail')])
def test_verdicts(fail, status):
    assert fuzz_sizes.fuzz_call(_Bad(fail), (33, 47), 2, True, None, False, 0)[0] == status


def test_precision_verdict():
    m = _Bad('garbage')
    assert fuzz_sizes.fuzz_call(m, (33, 47), 2, False, torch.bfloat16, False, 0)[0] == 'ok'  # no check asked
    status, detail = fuzz_sizes.fuzz_call(m, (33, 47), 2, False, torch.bfloat16, False, 0, rel_tol=0.1)
    assert status == 'fail' and 'differs from float32' in detail
    assert fuzz_sizes.fuzz_call(_Bad(None), (33, 47), 2, False, torch.bfloat16, False, 0, rel_tol=0.1)[0] == 'ok'


def test_calls_replay_alone(tmp_path):
    """A call depends on nothing before it (buffers restored, torch reseeded): --only gives the same record."""
    full = fuzz_sizes.fuzz_model('biformer_tiny', 3, 0, 32, 64, ['fp32'], ['train'])
    out = tmp_path / 'one.jsonl'
    fuzz_sizes.main(['--models', 'biformer_tiny', '--shapes', '3', '--max-side', '64', '--dtypes', 'fp32',
                     '--modes', 'train', '--only', '2', '--jsonl', str(out), '--out', '-'])
    _, (rec,) = fuzz_sizes._load(str(out))
    assert {k: rec[k] for k in ('index', 'hw', 'batch', 'status')} == {
        'index': 2, 'hw': list(full[2]['hw']), 'batch': full[2]['batch'], 'status': full[2]['status']}


@pytest.mark.parametrize('name', list(fuzz_sizes.SMALLEST.values()))
def test_fuzz_smallest_of_each_family(name):
    # the corner sizes first: (32, 32), (32, 64), (64, 32) b3 bf16 eval (the one-column conv bug), a prime square
    records = fuzz_sizes.fuzz_model(name, 6, 0, 32, 64, ['fp32', 'bf16', 'fp16'], ['eval', 'train'], rel_tol=0.1)
    assert len(records) == 6 and any(r['features'] for r in records)
    assert {r['dtype'] for r in records} == {'fp32', 'bf16', 'fp16'}
    assert not [r for r in records if r['status'] == 'fail'], records


@pytest.mark.slow
@pytest.mark.parametrize('name', visionattn.list_models())
def test_fuzz_every_model_200_shapes(name, tmp_path):
    out = tmp_path / 'fuzz.md'
    assert fuzz_sizes.main(['--models', name, '--shapes', '200', '--out', str(out)]) == 0, out.read_text()
