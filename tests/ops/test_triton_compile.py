"""Every Triton kernel compiles for sm_80/86/89/90 (and sm_100/120 where Triton knows them) on this GPU-less machine,
fits the target's shared memory, stays within the register-spill budget and, in fp16/bf16, uses tensor cores.

The kernels are compiled through the project's own launch wrappers (``visionattn/ops/triton/_compile_check.py``
stands in for the driver). The default tier compiles a representative subset (every kernel x dtype on sm_80/86/90 at
head dim 64, every feature once: ``cases(subset=True)``); the slow tier the full matrix, and the matrix against
Triton 3.6 (the GPU machines') when a throwaway environment with it exists (``VISIONATTN_TRITON36_PYTHON``, default
/tmp/triton36/bin/python).
"""
import os
import subprocess
import sys

import pytest

triton = pytest.importorskip('triton')

from visionattn.ops.triton import _compile_check as cc  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
from tools import triton_resources  # noqa: E402


def default_cases():
    return cc.cases(subset=True)


_RESULTS = {}


def _compiled(cases):
    missing = [c for c in cases if c not in _RESULTS]
    if missing:
        for case, records, err in triton_resources.compile_cases(missing, workers=min(2, os.cpu_count() or 1)):
            _RESULTS[case] = (records, err)
    return [(c, *_RESULTS[c]) for c in cases]


def _assert_ok(results):
    problems = []
    for case, records, err in results:
        if err is not None:
            problems.append(f'{case.id}: does not compile: {err}')
            continue
        names = {r.kernel for r in records}
        if len(records) != 2 or len(names) != 2:
            problems.append(f'{case.id}: expected a forward and a backward kernel, compiled {sorted(names)}')
        problems += [f'{case.id}: {p}' for r in records for p in cc.check(case, r)]
    assert not problems, '\n'.join(problems)


def test_targets_known():
    # sm_80/86/89/90 are what the project promises; a Triton that cannot compile for them fails here
    assert {80, 86, 89, 90} <= set(cc.known_archs())


def test_compile_matrix_default_tier():
    _assert_ok(_compiled(default_cases()))


def test_the_harness_sees_limits_and_tensor_cores():
    # the checks can fail: a kernel over sm_86's limit and one without tensor cores are reported
    case = cc.Case('gna', 'base', 'float16', 32, 86)
    res = cc.KernelResources('_gna_fwd_kernel', 86, 4, 3, 100, 0, 101377, 0, {})
    problems = cc.check(case, res)
    assert any('shared memory 101377 > 101376' in p for p in problems)
    assert any('no tensor-core instruction' in p for p in problems)
    # and the compiled kernels report real figures: GNA fp16 on sm_90 uses wgmma, on sm_80 mma.sync
    (fwd80, _), (fwd90, _) = (cc.run_case(cc.Case('gna', '1d', 'float16', 32, a)) for a in (80, 90))
    assert fwd80.tensor_core > 0 and fwd90.tensor_core > 0 and fwd80.registers > 0 and fwd80.shared > 0


def test_per_target_tiles_fit_sm86():
    # the case of the issue: the fp32 block-sparse backward at head dim 64 needed 114,688 bytes with one config for all
    [(_, records, err)] = _compiled([cc.Case('block_sparse', 'base', 'float32', 64, 86)])
    assert err is None and records[1].kernel == '_bsa_bwd_kernel' and records[1].shared <= cc.SMEM_LIMIT[86]
    # the wrappers choose by target: fewer pipeline stages where shared memory is smaller (fp32, head dim 128)
    import torch

    from visionattn.ops.triton import block_sparse, neighborhood
    q = torch.empty(1, 1, 64, 1, 128)
    chosen = {}
    for arch in (86, 90):
        with cc.compile_only(arch):
            chosen[arch] = (block_sparse._blocks(q, q, 64)[-1],
                            neighborhood._launch_config((1, 8, 8), 128, 4, None, backward=False)[-1])
    assert chosen[86] == (2, 2) and chosen[90] == (3, 3)


def test_resources_table_is_current():
    with open(triton_resources.TABLE) as f:
        committed = f.read()
    if f'Triton {triton.__version__} ' not in committed:
        pytest.skip(f'benchmarks/triton_resources.md was generated with another Triton than {triton.__version__}')
    committed_rows = set(triton_resources.table_rows_of(committed))
    ours = triton_resources.table_rows_of(triton_resources.render(triton_resources.rows(_compiled(default_cases()))))
    stale = [r for r in ours if r not in committed_rows]
    assert not stale, ('benchmarks/triton_resources.md is stale (run python tools/triton_resources.py); rows that '
                       'differ:\n' + '\n'.join(stale[:10]))


@pytest.mark.slow
def test_compile_matrix_full():
    _assert_ok(_compiled(cc.cases()))


@pytest.mark.slow
def test_resources_table_full_check():
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'triton_resources.py'), '--check'],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


@pytest.mark.slow
def test_compile_matrix_triton36():
    python = os.environ.get('VISIONATTN_TRITON36_PYTHON', '/tmp/triton36/bin/python')
    if not os.path.exists(python):
        pytest.skip(f'no Triton 3.6 environment at {python} (python -m venv /tmp/triton36 && /tmp/triton36/bin/pip '
                    'install triton==3.6.0, plus torch; or set VISIONATTN_TRITON36_PYTHON)')
    version = subprocess.run([python, '-c', 'import triton; print(triton.__version__)'], capture_output=True,
                             text=True)
    if not version.stdout.startswith('3.6'):
        pytest.skip(f'{python} has Triton {version.stdout.strip() or version.stderr[-200:]}, not 3.6')
    out = subprocess.run([python, os.path.join(ROOT, 'tools', 'triton_resources.py'), '--verify', '--full'],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
