"""tools/benchmark.py gna: the CLI runs on the smoke-test shape and writes its JSON report."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_gna_tiny(tmp_path):
    out = tmp_path / 'gna.json'
    cmd = [sys.executable, str(ROOT / 'tools' / 'benchmark.py'), 'gna', '--device', 'cpu', '--shapes', 'tiny',
           '--warmup', '0', '--repeat', '1', '--out', str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report['benchmark'] == 'gna' and report['machine']['torch'] and 'date' in report['machine']
    row = report['results'][0]
    for backend in ('reference', 'blocked'):
        assert row[backend]['infer_ms'] > 0 and row[backend]['train_ms'] > 0
