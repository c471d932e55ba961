"""tools/benchmark.py models: every configuration timed side by side, JSON + Markdown table + PNG written;
the reference backend runs the oracles; MAC counting counts sparse attention by its formulas."""
import json

import timm
import torch

from tools import benchmark as bench


def test_models_benchmark_cli(tmp_path):
    out = tmp_path / 'models.json'
    bench.main(['models', '--models', 'nat_mini', '--sizes', '64,48x80', '--batch-sizes', '1',
                '--backends', 'eager,reference', '--mode', 'both', '--warmup', '0', '--repeat', '1',
                '--threads', '1', '--out', str(out)])
    report = json.loads(out.read_text())
    assert {'torch', 'cpu_count', 'date'} <= set(report['machine'])
    rows = report['results']
    assert len(rows) == 2 * 2 * 2
    assert all(r['error'] is None and r['latency_ms'] > 0 and r['throughput'] > 0 for r in rows)
    assert out.with_suffix('.md').read_text().count('`nat_mini`') == 8
    assert out.with_suffix('.png').stat().st_size > 1000


def test_force_backend_and_sparse_macs():
    import visionattn  # noqa: F401
    from visionattn.ops import force_backend, get_backend
    from visionattn.ops.flops import count_macs
    q = torch.randn(1, 8, 8, 1, 4)
    with force_backend('reference'):
        assert get_backend('gna', query=q, key=q, value=q, kernel_size=(3, 3)).__name__ == 'gna_reference'
    from visionattn.ops.cpu import _ext as cpu_ext
    fast = '_cpu_backend' if cpu_ext.load() else 'gna_blocked_backend'  # the fused CPU kernels, where built
    assert get_backend('gna', query=q, key=q, value=q, kernel_size=(3, 3)).__name__ == fast
    # NAT-Mini at 224: the paper's 2.7 GFLOPs (MACs); the attention counts 7x7 windows, not 56^2 x 56^2
    model = timm.create_model('nat_mini').eval()
    total, per_op = count_macs(model, torch.randn(1, 3, 224, 224))
    assert abs(total / 1e9 - 2.7) < 0.05
    heads_dims = [(2, 32, 56), (4, 32, 28), (8, 32, 14), (16, 32, 7)]
    depths = (3, 4, 6, 5)
    expected = sum(d * h * (s * s) * 49 * hd * 2 for (h, hd, s), d in zip(heads_dims, depths))
    assert per_op['visionattn.gna_blocked'] == expected


def test_sparse_macs_whatever_backend_runs():
    from visionattn.ops.flops import count_macs
    x = torch.randn(1, 3, 224, 224)
    # BiFormer-T: routed pairs of the block-sparse op in stages 1-3 (at 14x14 the CPU picks dense SDPA to run it,
    # but the count is the op's): (tokens, topk, region tokens, channels, depth)
    _, per_op = count_macs(timm.create_model('biformer_tiny').eval(), x)
    stages = [(3136, 1, 64, 64, 2), (784, 4, 16, 128, 2), (196, 16, 4, 256, 8)]
    assert per_op['visionattn.block_sparse_attn_fwd'] == sum(n * k * t * 2 * c * d for n, k, t, c, d in stages)
    # Sparsifiner-DeiT-S: 50 listed keys per patch-token row, all 197 for the class token, 6 heads of 64, 12 layers
    _, per_op = count_macs(timm.create_model('sparsifiner_deit_small_patch16_224').eval(), x)
    assert per_op['visionattn.topk_attn_fwd'] == 12 * 6 * (196 * 50 + 197) * 128


def test_models_benchmark_strides(tmp_path):
    """--strides: stride 1 (the baseline) and the listed strides, each with the simulator's numbers; 'sim' picks
    the strides the simulator finds perfectly block-sparse."""
    out = tmp_path / 'strides.json'
    bench.main(['models', '--models', 'nat_mini', '--sizes', '56', '--batch-sizes', '1', '--strides', '7',
                '--warmup', '0', '--repeat', '1', '--threads', '1', '--out', str(out), '--no-plot'])
    rows = json.loads(out.read_text())['results']
    assert [r['stride'] for r in rows] == [1, 7]
    assert not rows[0]['sim']['perfectly_block_sparse'] and rows[1]['sim']['perfectly_block_sparse']
    assert rows[0]['measured_speedup'] == rows[0]['sim_attn_speedup'] == 1
    assert rows[1]['sim_attn_speedup'] > 1 and rows[1]['measured_speedup'] > 0
    assert rows[1]['attn_op_ms'] > 0 and rows[1]['measured_attn_op_speedup'] > 0
    assert '| 7 | yes |' in out.with_suffix('.md').read_text()
    plan = bench.run_models.__globals__['_stride_plan']('nat_mini', (56, 56), 'sim')
    assert list(plan)[0] == 1 and 7 in plan and all(r['perfectly_block_sparse'] for r in list(plan.values())[1:])


def test_simulator_and_blocked_backend_agree_on_unmasked_strides():
    # what the blocked backend runs without a mask the simulator calls perfectly block-sparse (the converse can fail:
    # the backend's key spans are uniform over tiles); window attention (stride = kernel) on NAT's maps is both
    from tools.benchmark_models import simulate_na_layers

    for size, k in ((56, 7), (28, 7), (14, 7), (7, 7), (33, 5), (17, 3), (32, 4)):
        layer = dict(layer='x', map=[size, size], kernel_size=[k, k], dilation=[1, 1], small_input='pad', heads=2,
                     head_dim=4)
        for s in range(1, k + 1):
            sim = simulate_na_layers([layer], s)
            assert sim['perfectly_block_sparse'] or not sim['backend_unmasked'], (size, k, s)
            row = sim['layers'][0]
            assert row['attended_pairs'] == (size * k) ** 2
            assert row['backend_pairs'] >= row['attended_pairs'] and row['computed_pairs'] >= row['attended_pairs']
        if k == 7 and size % 7 == 0:  # NAT's maps at 224
            assert simulate_na_layers([layer], 7)['backend_unmasked'], size
