"""Packaging: wheels and sdists carry the native kernel sources, and an installed (non-editable) wheel finds them.

Builds a wheel and an sdist of a copy of the checkout into a temporary folder (``pip wheel --no-deps
--no-build-isolation``, setuptools' PEP 517 ``build_sdist``), installs the wheel into a fresh virtual environment that
sees this interpreter's packages (torch is not reinstalled; nothing is downloaded), and runs there, outside the
checkout, the native top-k backend against its oracle. About 30 s on the 2-core dev machine (under load).
"""
import json
import os
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNEL_SUFFIXES = ('.c', '.cpp', '.h', '.cu', '.cuh')

_CHECK = r'''
import json, os, sys
import torch
import visionattn
from visionattn.ops import cpu, topk_attention, topk_attention_reference, topk_indices
from visionattn.ops.cpu._sources import source_dir
res = {'file': visionattn.__file__, 'source_dir': str(source_dir()), 'reason': cpu.unavailable_reason()}
if res['reason'] is None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 17, 3, 16, generator=g, dtype=torch.float64) for _ in range(3))
    index = torch.rand(2, 3, 16, 17, generator=g).argsort(-1)[..., :5]
    out = topk_attention(q, k, v, index, 0.25, num_dense=1, backend='cpu')
    ref = topk_attention_reference(q, k, v, index, 0.25, num_dense=1)
    res['err'] = float((out - ref).abs().max())
    scores = torch.randn(64, 197, generator=g)
    res['topk_equal'] = bool((topk_indices(scores, 50).sort(-1)[0] == scores.topk(50, -1)[1].sort(-1)[0]).all())
from visionattn.ops import na2d
from visionattn.ops.cpu import _ext
from visionattn.ops.reference import gna_reference
res['ext_reason'] = _ext.unavailable_reason()
if res['ext_reason'] is None:  # the fused C++ GNA kernel built from the wheel's sources
    q, k, v = (torch.randn(1, 11, 12, 2, 8, dtype=torch.float64) for _ in range(3))
    out = na2d(q, k, v, 5, dilation=2, backend='cpu')
    res['gna_err'] = float((out - gna_reference(q, k, v, (5, 5), (1, 1), (2, 2), (False, False))).abs().max())
print(json.dumps(res))
'''


def _kernel_files(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.rglob('*') if p.suffix in KERNEL_SUFFIXES)


def _copy_checkout(dst: Path) -> None:
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc', '*.so', '*.egg-info', 'build', 'dist')
    for name in ('setup.py', 'README.md', 'MANIFEST.in', 'pyproject.toml'):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dst / name)
    for name in ('visionattn', 'kernels'):
        shutil.copytree(ROOT / name, dst / name, ignore=ignore)


def _run(cmd, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f'{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    return proc.stdout


def test_wheel_and_sdist_ship_kernels_and_the_installed_wheel_runs_them(tmp_path):
    expected = _kernel_files(ROOT / 'kernels')
    assert 'cpu/topk.c' in expected
    src, dist = tmp_path / 'src', tmp_path / 'dist'
    src.mkdir()
    _copy_checkout(src)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(dist), '.'],
         cwd=src, env=env)
    wheel = next(dist.glob('visionattn-*.whl'))
    with zipfile.ZipFile(wheel) as zf:
        prefix = 'visionattn/_kernels/'
        in_wheel = sorted(n[len(prefix):] for n in zf.namelist() if n.startswith(prefix))
    assert in_wheel == expected
    build_sdist = 'import sys, setuptools.build_meta as b; print(b.build_sdist(sys.argv[1]))'
    sdist_name = _run([sys.executable, '-c', build_sdist, str(dist)], cwd=src, env=env).strip().splitlines()[-1]
    with tarfile.open(dist / sdist_name) as tf:
        prefix = sdist_name[:-len('.tar.gz')] + '/kernels/'
        in_sdist = sorted(
            n[len(prefix):] for n in tf.getnames() if n.startswith(prefix) and n.endswith(KERNEL_SUFFIXES))
    assert in_sdist == expected

    # a fresh venv that sees this interpreter's packages through a .pth (no torch reinstall, no download)
    venv = tmp_path / 'venv'
    base = getattr(sys, '_base_executable', sys.executable)
    _run([base, '-m', 'venv', '--without-pip', str(venv)])
    py = venv / 'bin' / 'python'
    purelib = Path(_run([str(py), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])']).strip())
    (purelib / '_visionattn_test_parent.pth').write_text('\n'.join(site.getsitepackages()) + '\n')
    _run([sys.executable, '-m', 'pip', '--python', str(py), 'install', '--no-deps', '--no-index', '-q', str(wheel)],
         env=env)
    run_dir = tmp_path / 'elsewhere'  # not the checkout: its visionattn must not be importable
    run_dir.mkdir()
    out = _run([str(py), '-c', _CHECK], cwd=run_dir, env=dict(env, VISIONATTN_CACHE=str(tmp_path / 'cache')))
    res = json.loads(out.strip().splitlines()[-1])
    print(res)
    assert Path(res['file']).is_relative_to(purelib), res
    assert Path(res['source_dir']) == purelib / 'visionattn' / '_kernels' / 'cpu', res
    if not any(shutil.which(c) for c in (os.environ.get('CC'), 'cc', 'gcc', 'clang') if c):
        assert 'no C compiler' in res['reason']
        pytest.skip('no C compiler: the sources ship, the native backend reports why it is unavailable')
    assert res['reason'] is None, res
    assert res['err'] < 1e-10 and res['topk_equal'], res
    assert res['ext_reason'] is None and res['gna_err'] < 1e-10, res
