"""The C kernels for the CPU (kernels/cpu, loaded by visionattn/ops/cpu): the build and its fallbacks, and
``topk_indices`` against ``torch.topk`` (the exact same set of indices, ties and NaN included)."""
import pytest
import torch

from visionattn.ops import cpu, topk_indices


def _same_sets(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a.sort(dim=-1)[0] == b.sort(dim=-1)[0]).all())


def test_library_builds_and_is_cached(tmp_path, monkeypatch):
    assert cpu.unavailable_reason() is None, cpu.unavailable_reason()
    monkeypatch.setenv('VISIONATTN_CACHE', str(tmp_path))
    lib = cpu._build()
    built = list(tmp_path.glob('cpu_kernels/*/libvisionattn_cpu.so'))
    assert len(built) == 1 and lib.va_topk_select_f32
    mtime = built[0].stat().st_mtime_ns
    cpu._build()  # same source, compiler and CPU: loaded from the cache, not rebuilt
    assert built[0].stat().st_mtime_ns == mtime and len(list(tmp_path.glob('cpu_kernels/*/*'))) == 1


@pytest.mark.parametrize('threading', ['-fopenmp', '-fopenmp-simd'])  # OpenMP (torch's pool) or pthreads
def test_threaded_builds(threading, tmp_path, monkeypatch):
    from visionattn.ops.topk import topk_attention
    monkeypatch.setenv('VISIONATTN_CACHE', str(tmp_path))
    monkeypatch.setattr(cpu, '_THREADING', ([threading],))
    monkeypatch.setattr(cpu, '_STATE', {'lib': cpu._build()})
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 8, 200, 6, 16, generator=g).unbind(0)  # enough work to be split over threads
    index = torch.randn(8, 6, 199, 200, generator=g).topk(60, dim=-1)[1]
    ref = topk_attention(q.double(), k.double(), v.double(), index, 0.25, 1, backend='reference')
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with torch.no_grad():
            out = topk_attention(q, k, v, index, 0.25, 1, backend='cpu')
        x = torch.randn(400, 197, generator=g)
        sel = topk_indices(x, 50)
    finally:
        torch.set_num_threads(threads)
    assert (out.double() - ref).abs().max() < 1e-5
    assert _same_sets(sel, x.topk(50, dim=-1)[1])


def test_unavailable_reasons(monkeypatch):
    monkeypatch.setattr(cpu, '_STATE', {})
    monkeypatch.setenv('VISIONATTN_NO_CPU_KERNELS', '1')
    assert cpu.load() is None and 'VISIONATTN_NO_CPU_KERNELS' in cpu.unavailable_reason()
    monkeypatch.setattr(cpu, '_STATE', {})
    monkeypatch.delenv('VISIONATTN_NO_CPU_KERNELS')
    monkeypatch.setattr(cpu, '_compiler', lambda: None)
    assert cpu.load() is None and 'no C compiler' in cpu.unavailable_reason()
    # the ops fall back to torch
    x = torch.rand(4, 30)
    assert _same_sets(topk_indices(x, 7), x.topk(7, dim=-1)[1])


def test_compile_error_is_reported(tmp_path, monkeypatch):
    bad = tmp_path / 'bad.c'
    bad.write_text('this is not C')
    monkeypatch.setattr(cpu, '_SOURCE', bad)
    monkeypatch.setenv('VISIONATTN_CACHE', str(tmp_path / 'cache'))
    with pytest.raises(RuntimeError, match='failed to compile bad.c'):
        cpu._build()
    assert not list((tmp_path / 'cache').glob('cpu_kernels/*/*'))  # no half-written library left behind


@pytest.mark.parametrize('shape, k', [((2, 3, 196, 197), 50), ((5, 32), 8), ((7, 197), 197), ((3, 10), 1)])
def test_topk_indices_equals_torch(shape, k):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    assert _same_sets(topk_indices(x, k), x.topk(k, dim=-1)[1])


def test_topk_indices_ties_nan_and_signed_zero():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(64, 40, generator=g) * 4).floor()  # many ties at the k-th value: torch's own pick
    x[3, 5] = float('nan')
    x[4] = 0.
    x[4, :20] = -0.  # -0 == +0: a tie, not an order
    x[5, :5] = float('inf')
    x[6, :] = -float('inf')
    for k in (1, 10, 25, 40):
        torch.testing.assert_close(topk_indices(x, k).sort(-1)[0], x.topk(k, dim=-1, sorted=False)[1].sort(-1)[0])


def test_topk_indices_layouts_and_dtypes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 197, 6, generator=g).transpose(1, 2)  # not contiguous
    assert _same_sets(topk_indices(x, 50), x.topk(50, dim=-1)[1])
    for t in (x.double(), x.half()):  # not float32: torch.topk
        assert _same_sets(topk_indices(t, 50), t.topk(50, dim=-1)[1])
    for k in (0, 198):
        with pytest.raises(ValueError, match=r'k must be in \[1, 197\]'):
            topk_indices(x, k)


def test_topk_indices_compiles():
    x = torch.randn(3, 6, 50)
    fn = torch.compile(lambda t: topk_indices(t, 12), fullgraph=True, backend='aot_eager')
    assert _same_sets(fn(x), x.topk(12, dim=-1)[1])
