import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), '..', '..')


def test_model_zoo_is_generated_and_current():
    # every registered model must have its row: a family that lands without regenerating model_zoo.md fails here
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    try:
        import model_zoo
    finally:
        sys.path.pop(0)
    import visionattn
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
