"""Every Triton kernel compiles for sm_80/86/89/90 (and sm_100/120 where Triton knows them) on this GPU-less machine,
fits the target's shared memory, stays within the register-spill budget and, in fp16/bf16, uses tensor cores.

The kernels are compiled through the project's own launch wrappers (``visionattn/ops/triton/_compile_check.py``
stands in for the driver). The default tier compiles a representative subset (every kernel x dtype on sm_80/86/90 at
head dim 64, every feature once: ``cases(subset=True)``); the slow tier the full matrix, and the matrix against
Triton 3.6 (the GPU machines') in a throwaway environment it finds or creates (``_triton36_python``).
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
        names = [r.kernel for r in records]
        if len(set(names)) != 2 or names[-1] == names[0]:
            problems.append(f'{case.id}: expected forward kernels (one per autotune config) and a backward kernel, '
                            f'compiled {names}')
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
    fwd80, fwd90 = (cc.run_case(cc.Case('gna', '1d', 'float16', 32, a))[0] for a in (80, 90))
    assert fwd80.tensor_core > 0 and fwd90.tensor_core > 0 and fwd80.registers > 0 and fwd80.shared > 0


def test_per_target_tiles_fit_sm86():
    # the case of the issue: the fp32 block-sparse backward at head dim 64 needed 114,688 bytes with one config for all
    [(_, records, err)] = _compiled([cc.Case('block_sparse', 'base', 'float32', 64, 86)])
    assert err is None and records[1].kernel == '_bsa_bwd_kernel' and records[1].shared <= cc.SMEM_LIMIT[86]
    # the wrappers choose by target: fewer pipeline stages where shared memory is smaller (block-sparse fp32 and the
    # GNA fp16 backward, head dim 128)
    import torch

    from visionattn.ops.triton import block_sparse, neighborhood
    q = torch.empty(1, 1, 64, 1, 128)
    chosen = {}
    for arch in (86, 90):
        with cc.compile_only(arch):
            chosen[arch] = (block_sparse._blocks(q, q, 64)[-1],
                            neighborhood._launch_config((1, 8, 8), 128, 2, None, backward=True)[-1])
    assert chosen[86] == (2, 2) and chosen[90] == (3, 3)


def test_autotune_pruned_by_shared_memory(monkeypatch):
    # the fp16/bf16 forwards are autotuned over the configs that fit the target; pruning drops the others and keeps
    # the fixed (per-target) choice first; each kept config compiles and fits (the matrix compiles all of them)
    import torch
    from triton.runtime.autotuner import Autotuner

    from visionattn.ops.triton import _autotune, block_sparse, neighborhood
    q = torch.empty(1, 1, 64, 1, 64, dtype=torch.float16)
    gna = dict(BLOCK_M=64, BLOCK_D=64, Q=q)
    bsa = dict(BLOCK_M=64, BLOCK_D=64, BLOCK_DV=64, Tk=64, Q=q)
    for tuner, args in ((neighborhood._gna_fwd_tuned, gna), (block_sparse._bsa_fwd_tuned, bsa)):
        assert isinstance(tuner, Autotuner)
        kept = {}
        for arch in (86, 90):
            with cc.compile_only(arch):
                kept[arch] = [(c.kwargs['BLOCK_N'], c.num_warps, c.num_stages)
                              for c in tuner.early_config_prune(tuner.configs, args)]
        assert len(kept[90]) >= 3 and set(kept[86]) <= set(kept[90]), kept
    # a 40 KB target keeps only the configs whose estimate fits it; nothing fits 1 KB: the fixed choice alone
    big = neighborhood._config_candidates(64, 64, 2, False, 10 ** 6)
    small = neighborhood._config_candidates(64, 64, 2, False, 40 * 1024)
    assert set(small) < set(big) and (64, 4, 3) in big and (64, 4, 3) not in small
    assert neighborhood._config_candidates(64, 64, 2, False, 1024) == [(16, 4, 1)]
    assert block_sparse._config_candidates(64, 64, 64, 64, 2, False, 1024) == [(16, 16, 4, 1)]
    # backward kernels (atomics) and fp32 forwards: one config
    assert len(neighborhood._config_candidates(64, 64, 2, True, 10 ** 6)) == 1
    assert len(block_sparse._config_candidates(64, 64, 64, 64, 4, False, 10 ** 6)) == 1
    # under the interpreter the wrappers launch the plain kernel with the fixed config (no benchmarking)
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    assert _autotune.interpreting()
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    assert not _autotune.interpreting()


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


def test_committed_table_fits_sm86():
    # every committed row within its target's limit, and every row of sm_86 / sm_89 / sm_120 (the smallest limit of
    # the supported GPUs, RTX 30xx/40xx/50xx, A10, L4, L40) within sm_86's
    with open(triton_resources.TABLE) as f:
        rows = [ln.split('|')[1:-1] for ln in triton_resources.table_rows_of(f.read())]
    assert len(rows) > 100 and all(len(r) == 11 for r in rows)
    small = {f'sm_{a}' for a in (86, 89, 120)}
    for r in rows:
        arch, shared, limit = r[4].strip(), int(r[7]), int(r[8])
        assert shared <= limit, r
        assert arch not in small or shared <= cc.SMEM_LIMIT[86], r
    assert {r[4].strip() for r in rows} >= {'sm_80', 'sm_86', 'sm_89', 'sm_90'}
    assert {int(r[3]) for r in rows} >= {16, 24, 32, 64, 128}


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)  # ~450 cases, hours of ptxas on 2 loaded cores: run it in chunks (cc.cases()[i::n])
def test_compile_matrix_full():
    _assert_ok(_compiled(cc.cases()))


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_resources_table_full_check():
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'triton_resources.py'), '--check'],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def _triton36_python() -> str:
    """The Python of a throwaway environment with Triton 3.6 (the GPU machines'): ``VISIONATTN_TRITON36_PYTHON``, else
    ~/.cache/visionattn/triton36 (or /tmp/triton36) when present, else created at ~/.cache/visionattn/triton36: a venv
    that sees this interpreter's packages (torch, numpy) through a .pth placed after its own Triton 3.6."""
    import site
    import sysconfig
    given = os.environ.get('VISIONATTN_TRITON36_PYTHON')
    if given:
        return given
    cache = os.path.join(os.path.expanduser('~'), '.cache', 'visionattn', 'triton36')
    for root in (cache, '/tmp/triton36'):
        python = os.path.join(root, 'bin', 'python')
        if os.path.exists(python):
            return python
    subprocess.run([sys.executable, '-m', 'venv', cache], check=True, capture_output=True)
    python = os.path.join(cache, 'bin', 'python')
    purelib = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                             check=True, capture_output=True, text=True).stdout.strip()
    ours = [sysconfig.get_paths()['purelib'], *site.getsitepackages()]
    with open(os.path.join(purelib, 'zz_parent_env.pth'), 'w') as f:  # sorted after triton's own files
        f.write('\n'.join(dict.fromkeys(ours)) + '\n')
    out = subprocess.run([python, '-m', 'pip', 'install', '--no-deps', 'triton==3.6.0'], capture_output=True,
                         text=True)
    if out.returncode:
        pytest.skip(f'could not install triton==3.6.0 into {cache}: {out.stderr[-300:]}')
    return python


@pytest.mark.slow
@pytest.mark.timeout(3600)  # a cold Triton cache: the default tier's ~130 kernels compiled again
def test_compile_matrix_triton36():
    """The default tier's cases (every kernel x dtype, each feature, the extra head dims and targets) compiled and
    checked with Triton 3.6 in a throwaway environment; the committed table is not touched."""
    python = _triton36_python()
    version = subprocess.run([python, '-c', 'import triton; print(triton.__version__)'], capture_output=True,
                             text=True)
    if not version.stdout.startswith('3.6'):
        pytest.skip(f'{python} has Triton {version.stdout.strip() or version.stderr[-200:]}, not 3.6')
    out = subprocess.run([python, os.path.join(ROOT, 'tools', 'triton_resources.py'), '--verify'],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
