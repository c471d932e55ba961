"""Helpers shared by the test modules: the Triton-interpreter subprocess runner and the GNA input generator."""
import os
import subprocess
import sys
from typing import Optional, Sequence, Tuple, Union

import torch


def run_triton_interpreted(test_file: str, *pytest_args: str, timeout: int = 800) -> str:
    """Run pytest on ``test_file`` in a fresh process with ``TRITON_INTERPRET=1`` (it must be set before triton is
    imported); asserts that the run passed and returns its stdout."""
    env = {**os.environ, 'TRITON_INTERPRET': '1'}
    r = subprocess.run(
        [sys.executable, '-m', 'pytest', test_file, '-q', '-p', 'no:cacheprovider', *pytest_args],
        env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    return r.stdout


def gna_inputs(
        shape: Sequence[int],
        kernel_size: Union[int, Sequence[int]],
        dtype: torch.dtype = torch.float32,
        device: Union[str, torch.device] = 'cpu',
        batch: int = 2,
        heads: int = 2,
        dim: int = 8,
        dim_v: Optional[int] = None,
        rpb: bool = True,
        n_extra: int = 0,
        seed: int = 0,
        draw_dtype: Optional[torch.dtype] = None,
        grad: bool = False,
) -> Tuple[torch.Tensor, ...]:
    """Random ``q, k, v [batch, *shape, heads, dim(_v)]``, the rpb ``[heads, *(2k-1)]`` (or None) and ``n_extra``
    additional keys / values ``[batch, n_extra, heads, dim(_v)]`` (or None, None), drawn in that order from one
    generator seeded ``seed``, in ``draw_dtype`` (default ``dtype``), then cast to ``dtype`` on ``device``."""
    n = len(shape)
    ks = (kernel_size,) * n if isinstance(kernel_size, int) else tuple(kernel_size)
    dim_v = dim if dim_v is None else dim_v
    g = torch.Generator().manual_seed(seed)

    def mk(*s: int) -> torch.Tensor:
        t = torch.randn(*s, generator=g, dtype=draw_dtype or dtype).to(device, dtype)
        return t.requires_grad_(grad) if grad else t

    q, k, v = mk(batch, *shape, heads, dim), mk(batch, *shape, heads, dim), mk(batch, *shape, heads, dim_v)
    bias = mk(heads, *[2 * x - 1 for x in ks]) if rpb else None
    ak, av = (mk(batch, n_extra, heads, dim), mk(batch, n_extra, heads, dim_v)) if n_extra else (None, None)
    return q, k, v, bias, ak, av


def export_dynamic_hw(module: torch.nn.Module, x: torch.Tensor, min_size: int, max_size: int = 512,
                      onnx_dir: Optional[str] = None):
    """``module`` (channels-last ``[B, H, W, C]`` input) exported the way ``visionattn.export`` exports (export mode,
    non-strict, deferred runtime asserts) with H and W dynamic in ``[min_size, max_size]``; returns the callable: the
    ExportedProgram's module, or with ``onnx_dir`` its ONNX file (written there) in onnxruntime."""
    from torch.export import Dim

    from visionattn.export import _export_program, _torch_export, export_mode, load_runner

    shapes = ({1: Dim('h', min=min_size, max=max_size), 2: Dim('w', min=min_size, max=max_size)},)
    with torch.no_grad(), export_mode():
        if onnx_dir is None:
            return _torch_export(module, x, shapes, strict=False).module()
        path = os.path.join(onnx_dir, 'm.onnx')
        torch.onnx.export(_export_program(module, x, shapes, strict=False), dynamo=True, optimize=False).save(path)
    run = load_runner(path)
    return lambda t: run(t)[0]
