"""The recipe table: every config equals the official recipe it follows, setting by setting.

Each ``tests/mm/recipes/<family>.py`` defines ``RECIPES``, one row per config::

    dict(config='configs/nat/upernet_nat_tiny_ade20k.py', official='<repo>@<commit>:<path>', gpus=8,
         expect={'model.backbone.drop_path_rate': 0.3, 'optim_wrapper.optimizer.lr': 6e-5, ...})

``expect`` keys are dotted paths into ``mmengine.Config.fromfile(config)`` after ``_base_`` resolution (integer parts
index lists: ``param_scheduler.0.end``); values compare exactly (floats with relative tolerance 1e-9, tuples and lists
as sequences). ``gpus`` (optional) is the official GPU count, so batch per GPU x GPUs is the official total batch.
"""
import glob
import importlib
import math
import os.path as osp
import re

import pytest

from . import require

pytestmark = pytest.mark.mm
mmengine_config = require('mmengine.config')

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
RECIPE_DIR = osp.join(osp.dirname(__file__), 'recipes')

# configs not yet audited against their official files (no row, no official header yet): none left
NOT_YET_AUDITED = ()
_MISSING = object()


def _load_rows():
    rows = []
    for path in sorted(glob.glob(osp.join(RECIPE_DIR, '*.py'))):
        name = osp.splitext(osp.basename(path))[0]
        if name.startswith('_'):
            continue
        module = importlib.import_module(f'tests.mm.recipes.{name}')
        rows.extend(module.RECIPES)
    return rows


ROWS = _load_rows()


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split('.'):
        if isinstance(node, (list, tuple)):
            if not re.fullmatch(r'-?\d+', part) or not -len(node) <= int(part) < len(node):
                return _MISSING
            node = node[int(part)]
        elif isinstance(node, dict):
            if part not in node:
                return _MISSING
            node = node[part]
        else:
            return _MISSING
    return node


def _equal(expected, actual) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return math.isclose(expected, actual, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(expected, (list, tuple)) and isinstance(actual, (list, tuple)):
        return len(expected) == len(actual) and all(_equal(e, a) for e, a in zip(expected, actual))
    if isinstance(expected, dict) and isinstance(actual, dict):
        return expected.keys() == actual.keys() and all(_equal(v, actual[k]) for k, v in expected.items())
    return expected == actual


def mismatches(cfg, expect: dict) -> list:
    """``(key, expected, actual)`` for every key of ``expect`` that the config does not match."""
    out = []
    for key, value in expect.items():
        actual = _get(cfg, key)
        if actual is _MISSING or not _equal(value, actual):
            out.append((key, value, '<missing>' if actual is _MISSING else actual))
    return out


def test_rows_are_well_formed():
    seen = set()
    for row in ROWS:
        assert set(row) <= {'config', 'official', 'expect', 'gpus'}, f'{row.get("config")}: unknown row keys'
        assert row['config'] not in seen, f'{row["config"]}: two rows'
        seen.add(row['config'])
        assert osp.isfile(osp.join(ROOT, row['config'])), f'{row["config"]}: no such config'
        assert re.fullmatch(r'[\w.-]+/[\w.-]+@[0-9a-f]{7,40}:\S+', row['official']), \
            f'{row["config"]}: official must be <owner>/<repo>@<commit>:<path>, got {row["official"]!r}'
        assert row['expect'], f'{row["config"]}: empty expect'


@pytest.mark.parametrize('row', ROWS, ids=[r['config'][len('configs/'):] for r in ROWS])
def test_config_follows_official_recipe(row):
    cfg = mmengine_config.Config.fromfile(osp.join(ROOT, row['config']))._cfg_dict
    bad = mismatches(cfg, row['expect'])
    assert not bad, f'{row["config"]} differs from the official recipe {row["official"]}:\n' + '\n'.join(
        f'  {key}: expected {exp!r}, config has {act!r}' for key, exp, act in bad)


def _configs():
    paths = sorted(glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True))
    rel = [osp.relpath(p, ROOT).replace(osp.sep, '/') for p in paths]
    return [p for p in rel if not p.startswith(('configs/_base_/', 'configs/demo/'))]


def _header(path: str) -> str:
    lines = []
    for line in open(osp.join(ROOT, path)).read().splitlines():
        if line.startswith('#') or line.startswith('_base_') or line.startswith(' ') or line in (']', ''):
            lines.append(line)
        else:
            break
    return '\n'.join(lines)


def test_every_config_has_a_row_and_names_its_official_source():
    rows = {r['config'] for r in ROWS}
    no_row, no_header = [], []
    for path in _configs():
        if path.startswith(NOT_YET_AUDITED):
            continue
        if path not in rows:
            no_row.append(path)
        if not re.search(r'^# (?:official:|Follows) (\S+@[0-9a-f]{7,40}:\S+|none\b.*\S)', _header(path), re.M):
            no_header.append(path)
    assert not no_row, 'configs without a row in tests/mm/recipes/*.py:\n  ' + '\n  '.join(no_row)
    assert not no_header, ("configs whose header has no '# official: <repo>@<commit>:<path>' (or '# official: none "
                           "(why)') line:\n  " + '\n  '.join(no_header))


def test_mismatch_report_names_every_key():
    cfg = {'model': {'backbone': {'drop_path_rate': 0.2}}, 'param_scheduler': [{'end': 1500}]}
    bad = mismatches(cfg, {'model.backbone.drop_path_rate': 0.3, 'param_scheduler.0.end': 1500,
                           'param_scheduler.1.end': 5, 'model.neck': None})
    assert [b[0] for b in bad] == ['model.backbone.drop_path_rate', 'param_scheduler.1.end', 'model.neck']
    assert not mismatches({'a': (1, 2), 'b': 6e-5 * (1 + 1e-12)}, {'a': [1, 2], 'b': 6e-5})
    assert mismatches({'a': 1}, {'a': True}) and mismatches({'a': 6.0e-5}, {'a': 6.1e-5})


def _cpu_only():
    import torch

    if torch.cuda.is_available():
        pytest.skip('the CPU fallback is for machines without CUDA')
    require('mmseg')


def test_amp_config_loads_as_fp32_on_cpu():
    # an AMP config (the official fp16 run) goes through the tools' loader: on CPU it trains in fp32, with a note
    _cpu_only()
    from visionattn.mm.runner import load_config

    cfg = load_config(osp.join(ROOT, 'configs', 'nat/upernet_nat_mini_ade20k.py'))
    assert cfg.optim_wrapper.type == 'OptimWrapper' and 'loss_scale' not in cfg.optim_wrapper
    assert cfg.optim_wrapper.optimizer.lr == 6e-5  # the rest of the wrapper is kept


@pytest.mark.slow
def test_amp_config_trains_on_cpu(tmp_path):
    # the default tier trains the first NAT UperNet config (an AMP one) in tests/mm/test_configs.py already
    _cpu_only()
    from mmengine.runner import Runner

    from .configs import on_demo_data

    cfg = on_demo_data('nat/upernet_nat_mini_ade20k.py', str(tmp_path), iters=1)
    assert cfg.optim_wrapper.type == 'OptimWrapper' and 'loss_scale' not in cfg.optim_wrapper
    Runner.from_cfg(cfg).train()
    assert osp.exists(osp.join(str(tmp_path), 'iter_1.pth'))
