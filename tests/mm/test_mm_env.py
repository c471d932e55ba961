"""The [mm] extra as installed: mmcv with compiled ops, mmseg, mmdet, mmpretrain importable and working on CPU; and the
tier's guard (`tests.mm.require`): with the extra installed or CI set, a broken import fails the run, never skips."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from . import mm_extra_expected, require
from .configs import ROOT

pytestmark = pytest.mark.mm

TOOLBOXES = ('mmengine', 'mmcv.ops', 'mmseg', 'mmdet', 'mmpretrain', 'visionattn.mm')


def test_mmcv_compiled_ops_match_torchvision():
    ops = require('mmcv.ops')
    import torchvision
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(50, 2, generator=g) * 20], 1)
    scores = torch.rand(50, generator=g)
    _, keep = ops.nms(boxes, scores, iou_threshold=0.5)
    ref = torchvision.ops.nms(boxes, scores, 0.5)
    assert keep.tolist() == ref.tolist()
    feats = torch.randn(1, 4, 16, 16, generator=g)
    rois = torch.tensor([[0, 1.0, 2.0, 10.0, 12.0], [0, 0.5, 0.5, 15.0, 7.0]])
    out = ops.roi_align(feats, rois, (3, 3), 1.0, 2, 'avg', True)
    ref = torchvision.ops.roi_align(feats, rois, (3, 3), 1.0, 2, aligned=True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_openmmlab_packages_import():
    for name in TOOLBOXES:
        require(name)  # skips only without the extra; with it (or under CI) a failure raises here


def test_require_skips_only_without_the_extra(monkeypatch):
    import tests.mm as guard
    monkeypatch.setattr(guard, 'mm_extra_expected', lambda: False)
    with pytest.raises(pytest.skip.Exception, match='extra not installed'):
        guard.require('visionattn_no_such_module')
    monkeypatch.setattr(guard, 'mm_extra_expected', lambda: True)
    with pytest.raises(ImportError, match='visionattn_no_such_module failed to import'):
        guard.require('visionattn_no_such_module')


def test_ci_makes_the_extra_expected(monkeypatch):
    monkeypatch.setenv('CI', 'true')
    assert mm_extra_expected()
    monkeypatch.setenv('CI', 'false')
    assert mm_extra_expected() == TestBrokenImport.installed()


class TestBrokenImport:
    """A subprocess pytest run in which `import mmseg` raises (a meta-path hook installed by sitecustomize): the import
    test fails and a module of the tier reports a collection error; nothing is skipped."""

    @staticmethod
    def installed() -> bool:
        env = {k: v for k, v in os.environ.items() if k != 'CI'}
        code = 'import sys; from tests.mm import mm_extra_expected as f; sys.exit(0 if f() else 1)'
        return subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env).returncode == 0

    def test_broken_mmseg_fails_the_run(self, tmp_path):
        (tmp_path / 'sitecustomize.py').write_text(textwrap.dedent('''
            import sys

            class _BreakMmseg:
                def find_spec(self, name, path=None, target=None):
                    if name == 'mmseg' or name.startswith('mmseg.'):
                        raise ImportError('simulated broken mmseg build')
                    return None

            sys.meta_path.insert(0, _BreakMmseg())
        '''))
        env = {k: v for k, v in os.environ.items() if k != 'CI'}
        if not self.installed():
            env['CI'] = 'true'  # without the extra, CI alone must turn the skip into a failure
        env['PYTHONPATH'] = os.pathsep.join([str(tmp_path), ROOT])
        env['OMP_NUM_THREADS'] = '1'
        proc = subprocess.run(
            [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '--continue-on-collection-errors',
             'tests/mm/test_mm_env.py::test_openmmlab_packages_import', 'tests/mm/test_backbone.py'],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out
        assert '1 failed' in out and '1 error' in out, out
        assert 'skipped' not in out, out
        assert 'mmseg failed to import' in out and 'simulated broken mmseg build' in out, out
