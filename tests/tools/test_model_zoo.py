"""model_zoo.md is generated, current, and covers every registered model with measured figures."""
import json
import os
import subprocess
import sys

import pytest

import visionattn
from tools import model_zoo

ROOT = os.path.join(os.path.dirname(__file__), '..', '..')


def test_every_model_has_measurements_and_paper_figures():
    # a family that lands without its zoo entries fails here (run tools/model_zoo.py --measure NAME)
    with open(model_zoo.MEASUREMENTS) as f:
        measured = json.load(f)
    with open(model_zoo.PAPERS) as f:
        papers = json.load(f)
    assert '_machine' in measured and measured['_machine'].get('summary')
    for name in visionattn.list_models():
        assert name in measured, f'{name}: no measurements (python tools/model_zoo.py --measure {name})'
        assert name in papers, f'{name}: no entry in tools/model_zoo_papers.json (top1 or a note)'
        assert papers[name].get('top1') is not None or papers[name].get('note'), name
        m = measured[name]
        assert m['macs'] > 0 and m['throughput'] > 0
    stale = set(measured) - set(visionattn.list_models()) - {'_machine'}
    assert not stale, f'measurements of models that are not registered: {sorted(stale)}'


@pytest.mark.parametrize('name', visionattn.list_models())
def test_params_column_matches_the_model(name):
    with open(model_zoo.MEASUREMENTS) as f:
        measured = json.load(f)
    if name not in measured:
        pytest.fail(f'{name}: not measured')
    assert measured[name]['params'] == model_zoo.count_params(name), f'{name}: re-measure, the model changed'


def test_model_zoo_is_generated_and_current():
    text = model_zoo.render()
    for name in visionattn.list_models():
        assert f'| `{name}` |' in text
    with open(os.path.join(ROOT, 'model_zoo.md')) as f:
        assert f.read() == text, 'model_zoo.md is stale: run python tools/model_zoo.py'


def test_model_zoo_check_cli():
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'model_zoo.py'), '--check'],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert 'up to date' in out.stdout
