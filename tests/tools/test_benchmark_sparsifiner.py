"""tools/benchmark.py sparsifiner: the CLI runs, writes its JSON with machine info and the side-by-side ratios."""
import json

from tools import benchmark as bench


def test_sparsifiner_in_process(tmp_path):
    out = tmp_path / 'sparsifiner.json'
    bench.main(['sparsifiner', '--batch-sizes', '1', '--keep-rates', '0.25', '--parts', 'attn,module', '--warmup', '0',
                '--repeat', '1', '--out', str(out)])
    report = json.loads(out.read_text())
    assert report['benchmark'] == 'sparsifiner'
    assert {'date', 'torch', 'cpu_count', 'platform', 'loadavg_1_5_15'} <= set(report['machine'])
    (row,) = report['results']
    assert row['keep_rate'] == 0.25 and row['keys_per_query'] == 50 and row['batch'] == 1
    for part in ('attn', 'module'):
        assert set(row[f'{part}_ms']) == {'dense', 'cpu', 'sparse', 'masked_sdpa'}
        assert all(v > 0 for v in row[f'{part}_ratio'].values())
