"""tools/benchmark.py bsa: the CLI runs, writes its JSON with machine info and the side-by-side ratios."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools import benchmark as bench

ROOT = Path(__file__).resolve().parents[2]


def _check(out):
    report = json.loads(out.read_text())
    assert report['benchmark'] == 'bsa'
    assert {'date', 'torch', 'triton', 'cpu_count', 'platform'} <= set(report['machine'])
    (row,) = report['results']
    assert row['shape'] == 'tiny' and row['tokens_per_region'] == 16
    for backend in ('gather', 'blocked'):
        assert row[backend]['infer_ms'] > 0 and row[backend]['train_ms'] > 0
        assert row[backend]['train_peak_mib'] >= 0
    assert set(row['ratio_gather_over']['blocked']) == {'infer_ms', 'train_ms', 'infer_peak_mib', 'train_peak_mib'}


def test_bsa_in_process(tmp_path):
    out = tmp_path / 'bsa.json'
    bench.main(['bsa', '--device', 'cpu', '--shapes', 'tiny', '--warmup', '0', '--repeat', '1', '--in-process',
                '--out', str(out)])
    _check(out)


@pytest.mark.slow
def test_bsa_cli_subprocesses(tmp_path):
    out = tmp_path / 'bsa.json'
    r = subprocess.run(
        [sys.executable, str(ROOT / 'tools' / 'benchmark.py'), 'bsa', '--device', 'cpu', '--shapes', 'tiny',
         '--warmup', '0', '--repeat', '1', '--out', str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    _check(out)
