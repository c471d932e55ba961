"""Export of visionattn models to ONNX (standard operators only) and to ``torch.export``.

Every custom op of the library is exported through its pure-PyTorch formulation: the export runs under
``force_backend('reference')``, so ``backend='auto'`` never picks a compiled, Triton or C backend while tracing, and
the exporter decomposes the oracle into standard ONNX operators (no custom ONNX domain). The one custom op that is
not dispatched, ``visionattn::topk_indices``, is translated to ONNX ``TopK`` (its result is the same index set).
The export therefore does not depend on which backend ``auto`` would pick on the exporting machine.

Example:
    >>> import visionattn
    >>> from visionattn.export import export
    >>> path = export('biformer_tiny', 'onnx', out='biformer_tiny.onnx', check=True)
"""
import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .ops import force_backend

__all__ = [
    'export', 'export_mode', 'check_export', 'ExportCheck', 'ExportError', 'load_runner', 'FIXED_SIZE', 'SIZE_MULTIPLE',
    'fit_size']

_FORMATS = ('onnx', 'torch-export')

# families whose graph cannot be dynamic in H and W, and why (export them with ``dynamic=False``); none at present
FIXED_SIZE: Dict[str, str] = {}
# a model option that fixes the size: TransNeXt's ``pos_bias='extrapolate'`` rebuilds its CPB tables for each size
_EXTRAPOLATE_REASON = (
    "pos_bias='extrapolate' rebuilds the CPB tables per size from torch.unique over pooled coordinate offsets, "
    "whose length is a data-dependent function of the map size: export it for one size (dynamic=False), or use the "
    "default pos_bias='interpolate' (dynamic)")


# families whose dynamic export takes H and W in multiples of the network stride, with a minimum size, and why:
# (multiple, minimum, reason). Their nested pad-then-halve size arithmetic is too deep for the exporter's symbolic
# reasoning (it specializes to the example size); with H = 32 * h every stage map is h * 2 ** k (no padding left).
# A minimum of None: the variant's default input size.
SIZE_MULTIPLE: Dict[str, Tuple[int, Optional[int], str]] = {
    'agent_swin': (32, None, "stride-32 stage sizes; the last stage's map must hold one shifted window (its side: the "
                   'default input size / 32, e.g. 7 at 224, 9 for agent_swin_small_288)'),
    'agent_cswin': (32, 32, 'stride-32 stage sizes (stripe padding over padded merges is too deep to reason on)'),
}


def size_multiple(name: str) -> Optional[Tuple[int, int, str]]:
    """``(multiple, minimum, reason)`` when model ``name`` exports with H and W in multiples of ``multiple``."""
    rule = next((r for f, r in SIZE_MULTIPLE.items() if name.startswith(f)), None)
    if rule is None or rule[1] is not None:
        return rule
    import timm
    return rule[0], max(timm.models.get_pretrained_cfg(name).input_size[1:]), rule[2]


def fit_size(name: str, size: Tuple[int, int]) -> Tuple[int, int]:
    """``size`` with each side rounded up to model ``name``'s ``SIZE_MULTIPLE`` and its minimum (else unchanged)."""
    rule = size_multiple(name)
    if rule is None:
        return tuple(size)
    return tuple(max(-(-v // rule[0]) * rule[0], rule[1]) for v in size)


def fixed_size_reason(name: str) -> Optional[str]:
    """Why model ``name`` exports for a fixed size only, or None when it exports with dynamic H and W."""
    return next((r for f, r in FIXED_SIZE.items() if name.startswith(f)), None)


def _model_fixed_size_reason(model: nn.Module) -> Optional[str]:
    if any(getattr(getattr(m, 'pos_cfg', None), 'mode', None) == 'extrapolate' for m in model.modules()):
        return _EXTRAPOLATE_REASON
    return None


@contextlib.contextmanager
def export_mode():
    """The context every export runs under: ops use their pure-PyTorch reference (backend-independent graphs)."""
    with force_backend('reference'):
        yield


def _topk_indices_decomposition(scores: torch.Tensor, k: int) -> torch.Tensor:
    return scores.topk(k, dim=-1, sorted=False)[1]



def _deform_conv2d_decomposition(
        x: torch.Tensor, weight: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor,
        stride_h: int, stride_w: int, pad_h: int, pad_w: int, dil_h: int, dil_w: int, n_weight_grps: int,
        n_offset_grps: int, use_mask: bool) -> torch.Tensor:
    """``torchvision::deform_conv2d`` (LITv2's DTM) in standard ops: the bilinear samples at every kernel tap by
    ``grid_sample`` (zero outside the map, as torchvision), then the kernel as a 1x1 convolution over the taps. ONNX
    ``DeformConv`` needs opset 19; this runs at any opset."""
    b, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    ho, wo = offset.shape[-2:]
    k = kh * kw
    dev, dt = x.device, x.dtype
    ky = (torch.arange(kh, device=dev, dtype=dt) * dil_h).repeat_interleave(kw)
    kx = (torch.arange(kw, device=dev, dtype=dt) * dil_w).repeat(kh)
    oy = torch.arange(ho, device=dev, dtype=dt) * stride_h - pad_h
    ox = torch.arange(wo, device=dev, dtype=dt) * stride_w - pad_w
    off = offset.view(b, n_offset_grps, k, 2, ho, wo)
    py = off[:, :, :, 0] + ky.view(1, 1, k, 1, 1) + oy.view(1, 1, 1, ho, 1)
    px = off[:, :, :, 1] + kx.view(1, 1, k, 1, 1) + ox.view(1, 1, 1, 1, wo)
    # pixel coordinates to grid_sample's align_corners=False convention (exact for a one-pixel map too)
    grid = torch.stack(((2 * px + 1) / w - 1, (2 * py + 1) / h - 1), -1)  # [B, G, K, Ho, Wo, 2]
    cg = c // n_offset_grps
    xs = x.reshape(b * n_offset_grps, cg, h, w)
    cols = F.grid_sample(xs, grid.reshape(b * n_offset_grps, k * ho, wo, 2), mode='bilinear', padding_mode='zeros',
                         align_corners=False)
    cols = cols.view(b, n_offset_grps, cg, k, ho, wo)
    if use_mask:
        cols = cols * mask.view(b, n_offset_grps, 1, k, ho, wo)
    cols = cols.reshape(b, c * k, ho, wo)
    return F.conv2d(cols, weight.reshape(o, c // n_weight_grps * k, 1, 1), bias, groups=n_weight_grps)


def _decompositions(onnx_opset: Optional[int] = None) -> Dict[Any, Callable]:
    """Decompositions of the custom ops that survive ``export_mode`` (not dispatched through a backend): each the op's
    own result in standard torch ops, so the graph has no custom op left. ``torchvision::deform_conv2d`` is kept for
    torch.export (torchvision's kernel) and for ONNX opset >= 19 (``DeformConv``, run by onnxruntime on CPU)."""
    table = {}
    if hasattr(torch.ops.visionattn, 'topk_indices'):
        table[torch.ops.visionattn.topk_indices.default] = _topk_indices_decomposition
    if onnx_opset is not None and onnx_opset < 19 and hasattr(torch.ops.torchvision, 'deform_conv2d'):
        table[torch.ops.torchvision.deform_conv2d.default] = _deform_conv2d_decomposition
    return table


def _suggested_range(err: BaseException) -> Optional[Dict[str, Tuple[int, int]]]:
    """The ``Dim`` ranges torch.export suggests when the only violated constraints are bounds (e.g. NAT's minimum
    size: every feature map at least one window), or None when it asks for a specialization."""
    import re
    text = str(err)
    if 'Specializations unexpectedly required' in text or 'Suggested fixes' not in text:
        return None
    bounds = _violated_bounds(text)
    if bounds:
        return bounds
    fixes = text.split('Suggested fixes', 1)[1]
    found = {n: (int(lo), int(hi)) for n, lo, hi in
             re.findall(r"(height|width) = Dim\('\w+', min=(\d+), max=(\d+)\)", fixes)}
    if not found or re.search(r'(height|width) = \d', fixes):
        return None
    return found


def _violated_bounds(text: str) -> Optional[Dict[str, Tuple[int, int]]]:
    """The ranges of a constraint violation whose every line is a plain bound on H or W (``lo <= size <= hi``, e.g.
    NAT's stage-4 map of at least 2x2 for H, W >= 33), or None. torch may then suggest a needless multiple-of
    fix (``height = 32*_height``) that the suggestion parser refuses."""
    import re
    lines = [ln for ln in text.split('Suggested fixes', 1)[0].splitlines() if ln.strip().startswith('- ')]
    pat = re.compile(r"- Not all values of (height|width) = L\['x'\]\.size\(\)\[\d\] in the specified range \d+ <= "
                     r"\1 <= \d+ satisfy the generated guard (\d+) <= L\['x'\]\.size\(\)\[\d\] and "
                     r"L\['x'\]\.size\(\)\[\d\] <= (\d+)$")
    found = {}
    for ln in lines:
        m = pat.search(ln.strip())
        if m is None:
            return None
        found[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return found or None


def _torch_export(model: nn.Module, x: torch.Tensor, shapes, strict: bool):
    # guards the symbolic reasoning cannot prove over the whole range (e.g. ``7 % (7 * ceil(H / 28)) != 0``, true for
    # every H >= 29) become runtime asserts in the graph instead of failing the export
    return torch.export.export(model, (x,), dynamic_shapes=shapes, strict=strict,
                               prefer_deferred_runtime_asserts_over_guards=True)


def _capture(model: nn.Module, x: torch.Tensor, shapes, strict: bool, retries: int = 3):
    """``torch.export`` of ``model`` (not decomposed), over the range the architecture allows when it needs one.

    A bound the architecture needs (e.g. a minimum size) is reported by the exporter with a suggested range: the
    export is retried over it, and again while each retry finds a narrower one (TransNeXt A-A-A-A: 97, then 125).
    """
    from torch.export import Dim
    size_range = None
    for attempt in range(retries + 1):
        try:
            ep = _torch_export(model, x, shapes, strict)
        except Exception as e:
            ranges = _suggested_range(e) if shapes is not None and attempt < retries else None
            if ranges is None:
                raise
            prev = size_range or ((32, 8192), (32, 8192))
            new = (ranges.get('height', prev[0]), ranges.get('width', prev[1]))
            if new == size_range:  # no progress
                raise
            size_range = new
            (lo_h, hi_h), (lo_w, hi_w) = size_range
            shapes = ({2: Dim('height', min=lo_h, max=hi_h), 3: Dim('width', min=lo_w, max=hi_w)},)
            continue
        if size_range is not None:
            ep.visionattn_size_range = size_range
        return ep


def _decompose(ep, table: Dict[Any, Callable]):
    """``ep`` decomposed by ``table`` (``ep`` itself is left as it is)."""
    out = ep.run_decompositions(table)
    if hasattr(ep, 'visionattn_size_range'):  # the exported range, kept on the decomposed program
        out.visionattn_size_range = ep.visionattn_size_range
    return out


def _torch_export_table() -> Dict[Any, Callable]:
    """What a ``torch-export`` program is decomposed by: core ATen and the custom ops (``_decompositions``)."""
    table = torch.export.default_decompositions()
    table.update(_decompositions())
    return table


def _onnx_table(opset: int) -> Optional[Dict[Any, Callable]]:
    """The one decomposition of an ONNX export: core ATen, then what ``torch.onnx.export``'s own pass decomposes
    (aten ops torchlib does not translate, from ``torch._decomp``), and the custom ops. One pass with this table
    gives the graph of those two passes in turn (the same ONNX nodes, checked on ConViT, NAT and LITv2), at the cost
    of one; None where this torch has not the exporter's internals it is built from (two passes then)."""
    try:
        from torch.onnx._internal.exporter import _constants, _decomp, _fx_passes, _registration  # noqa: F401
        registry = _registration.ONNXRegistry.from_torchlib(opset_version=max(opset, _constants.TORCHLIB_OPSET))
        table = _decomp.create_onnx_friendly_decomposition_table(
            set(_decomp.get_onnx_implemented_overloads(registry)))
    except (ImportError, AttributeError, TypeError):
        return None
    # core ATen first, as the first of the two passes (it decomposes ops torchlib would translate too): handing the
    # undecomposed program to the ONNX exporter's table alone broke ConViT's graph (an Add broadcasting 14 by 196)
    table.update(torch.export.default_decompositions())
    table.update(_decompositions(opset))
    return table


@contextlib.contextmanager
def _decomposed_for_onnx():
    """``torch.onnx.export`` of a program already decomposed by ``_onnx_table``: its own decomposition pass (a
    retrace of the whole graph that changes nothing then) is skipped; type promotion and the rest run as always."""
    from torch.onnx._internal.exporter import _fx_passes
    orig = getattr(_fx_passes, 'decompose_with_registry', None)
    if orig is None:  # another torch: its pass runs (a no-op retrace, slower, the same graph)
        yield
        return
    _fx_passes.decompose_with_registry = lambda ep, *args, **kwargs: ep
    try:
        yield
    finally:
        _fx_passes.decompose_with_registry = orig


def _export_program(model: nn.Module, x: torch.Tensor, shapes, strict: bool, onnx_opset: Optional[int] = None):
    """``model`` captured and decomposed by core ATen and the custom ops (at ``onnx_opset`` for ONNX)."""
    table = torch.export.default_decompositions()
    table.update(_decompositions(onnx_opset))
    return _decompose(_capture(model, x, shapes, strict), table)


def _to_onnx(ep, x: torch.Tensor, out: str, opset: int, optimize: Optional[bool], decomposed: bool) -> None:
    """Write the ONNX file of decomposed program ``ep`` (decomposed by ``_onnx_table`` when ``decomposed``)."""
    with _decomposed_for_onnx() if decomposed else contextlib.nullcontext():
        prog = torch.onnx.export(ep, (x,), out, dynamo=True, opset_version=opset, external_data=False,
                                 optimize=_onnx_optimize(ep, optimize), verbose=False)
    if prog is None:
        raise ExportError(f'{out}: torch.onnx.export returned nothing')


# graphs above this many nodes skip the onnxscript optimizer, whose time grows faster than linearly (measured on
# nat_mini: 6 s for 4 NAT blocks, 158 s for 18 on a loaded 2-core machine); onnxruntime applies its own graph
# optimizations (constant folding, common subexpressions) when it loads the model, the outputs are the same
_OPTIMIZE_MAX_NODES = 4000


def _onnx_optimize(ep, optimize: Optional[bool]) -> bool:
    return len(ep.graph.nodes) <= _OPTIMIZE_MAX_NODES if optimize is None else optimize


def _blocking_op(err: BaseException) -> Optional[str]:
    """The op named in an exporter error, if any (so a failing export says what blocked it)."""
    import re
    text = ''.join(str(e) for e in _chain(err))
    m = re.search(r'(visionattn(?:::|\.)[A-Za-z0-9_]+(?:\.default)?)', text)
    if m:
        return m.group(1)
    m = re.search(r'\b((?!aten::|prim::)[A-Za-z_]\w*::[A-Za-z_]\w*)', text) or \
        re.search(r"(aten(?:::|\.)[A-Za-z0-9_.]+)", text)
    return m.group(1) if m else None


def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


class ExportError(RuntimeError):
    """An export failed; ``op`` names the op that blocked it when the exporter said so."""

    def __init__(self, msg: str, op: Optional[str] = None):
        super().__init__(msg)
        self.op = op


def _build(model_or_name: Union[str, nn.Module], features_only: bool, pretrained: bool,
           checkpoint: Optional[str], **kwargs) -> nn.Module:
    if isinstance(model_or_name, nn.Module):
        if checkpoint or pretrained:
            raise ValueError('checkpoint/pretrained apply to a model name, not to a built model')
        return model_or_name.eval()
    import timm

    from . import models  # noqa: F401  (registers the visionattn models)
    if features_only:
        kwargs['features_only'] = True
    kwargs.setdefault('pretrained', pretrained)
    if checkpoint:
        kwargs['checkpoint_path'] = checkpoint
    return timm.create_model(model_or_name, **kwargs).eval()


def _dynamic_shapes(dynamic: bool, min_size: int = 32, multiple: Optional[Tuple[int, int, str]] = None):
    if not dynamic:
        return None
    from torch.export import Dim
    if multiple is not None:
        m, lo = multiple[:2]
        h, w = Dim('height_blocks', min=-(-lo // m), max=8192 // m), Dim('width_blocks', min=-(-lo // m), max=8192 // m)
        return ({2: m * h, 3: m * w},)
    h, w = Dim('height', min=min_size, max=8192), Dim('width', min=min_size, max=8192)
    return ({2: h, 3: w},)


def _as_tuple(out) -> Tuple[torch.Tensor, ...]:
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, dict):
        return tuple(out.values())
    return tuple(out)


class _Tupled(nn.Module):
    """Wraps a features_only model so that its output is a tuple (ONNX outputs are flat)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return _as_tuple(self.model(x))


def export(
        model_or_name: Union[str, nn.Module],
        format: str = 'onnx',
        out: Optional[str] = None,
        dynamic: bool = True,
        img_size: Optional[Tuple[int, int]] = None,
        batch_size: int = 1,
        features_only: bool = False,
        opset: int = 18,
        pretrained: bool = False,
        checkpoint: Optional[str] = None,
        check: Union[bool, Sequence[Tuple[int, int]]] = False,
        atol: float = 1e-4,
        strict: bool = False,
        optimize: Optional[bool] = None,
        **model_kwargs,
):
    """Export a model to ONNX or to a ``torch.export`` ExportedProgram.

    Args:
        model_or_name: A built model (used as is, in eval mode) or a registered name for ``timm.create_model``.
        format: ``'onnx'`` (dynamo exporter, standard ops) or ``'torch-export'`` (``torch.export.export``).
        out: Output file (``.onnx`` or ``.pt2``); for ONNX a temporary file when None.
        dynamic: Dynamic height and width (batch stays fixed at ``batch_size``).
        img_size: ``(H, W)`` of the example input; None: 224 x 224 (for a name, fitted to its ``SIZE_MULTIPLE``).
        batch_size: Batch of the example input.
        features_only: Build the model with ``features_only=True`` (output: a tuple of NCHW maps).
        opset: ONNX opset (>= 18).
        pretrained: Load the pretrained weights (names only).
        checkpoint: Load this checkpoint file (names only).
        check: Compare the export with eager: ``True`` at the export size and two other sizes (one non-square),
            or a list of ``(H, W)``. Raises ``AssertionError`` above ``atol``.
        atol: Tolerance of the check (max abs diff over all outputs).
        strict: ``torch.export`` strict mode (default non-strict, which ONNX's exporter also uses).
        optimize: Run the onnxscript optimizer on the ONNX graph; None: for graphs up to ``_OPTIMIZE_MAX_NODES``
            nodes (its time grows faster than linearly; onnxruntime optimizes the graph when loading it anyway).
        **model_kwargs: Passed to ``timm.create_model``.

    Returns:
        The ONNX file path, or the ExportedProgram; with ``check``, a tuple ``(result, [ExportCheck, ...])``.
    """
    if format not in _FORMATS:
        raise ValueError(f'format must be one of {_FORMATS}, got {format!r}')
    if opset < 18:
        raise ValueError(f'opset must be >= 18, got {opset}')
    if img_size is None:
        img_size = fit_size(model_or_name, (224, 224)) if isinstance(model_or_name, str) else (224, 224)
    if len(img_size) != 2:
        raise ValueError(f'img_size must be (H, W), got {img_size}')
    if dynamic and isinstance(model_or_name, str) and fixed_size_reason(model_or_name):
        raise ValueError(f'{model_or_name} cannot export with dynamic H and W: {fixed_size_reason(model_or_name)}')
    rule = size_multiple(model_or_name) if isinstance(model_or_name, str) else None
    if dynamic and rule and (img_size[0] % rule[0] or img_size[1] % rule[0] or min(img_size) < rule[1]):
        raise ValueError(f'{model_or_name} exports dynamically from sizes in multiples of {rule[0]}, at least '
                         f'{rule[1]} ({rule[2]}), got img_size={tuple(img_size)}')
    model = _build(model_or_name, features_only, pretrained, checkpoint, **model_kwargs)
    if dynamic and _model_fixed_size_reason(model):
        raise ValueError(f'{model_or_name} cannot export with dynamic H and W: {_model_fixed_size_reason(model)}')
    wrapped = _Tupled(model)
    x = torch.randn(batch_size, 3, *img_size)
    shapes = _dynamic_shapes(dynamic, multiple=rule)
    name = model_or_name if isinstance(model_or_name, str) else type(model_or_name).__name__
    with torch.no_grad(), export_mode():
        try:
            if format == 'onnx':
                if out is None:
                    out = os.path.join(tempfile.mkdtemp(prefix='visionattn_onnx_'), f'{name}.onnx')
                table = _onnx_table(opset)
                ep = _decompose(_capture(wrapped, x, shapes, strict), table) if table is not None else \
                    _export_program(wrapped, x, shapes, strict, onnx_opset=opset)
                _to_onnx(ep, x, out, opset, optimize, decomposed=table is not None)
                result = out
            else:
                result = _decompose(_capture(wrapped, x, shapes, strict), _torch_export_table())
                if out is not None:
                    torch.export.save(result, out)
        except ExportError:
            raise
        except Exception as e:  # name what blocked it
            op = _blocking_op(e)
            raise ExportError(f'{name}: {format} export failed' + (f' at op {op}' if op else '') +
                              f': {type(e).__name__}: {str(e)[:2000]}', op) from e
    if not check:
        return result
    sizes = (default_check_sizes(img_size) if dynamic else [tuple(img_size)]) if check is True else \
        [tuple(s) for s in check]
    report = check_export(wrapped, result, sizes, batch_size=batch_size, atol=atol)
    return result, report


def default_check_sizes(img_size: Tuple[int, int]) -> List[Tuple[int, int]]:
    """The export size and two others: a larger square one and a non-square one (multiples of 32)."""
    h, w = img_size
    return [(h, w), (h + 32, w + 32), (h + 32, w + 96)]


@dataclass
class ExportCheck:
    size: Tuple[int, int]
    max_abs_diff: float
    ok: bool
    error: Optional[str] = None
    shapes: List[Tuple[int, ...]] = field(default_factory=list)


def load_runner(exported: Union[str, 'torch.export.ExportedProgram'], threads: Optional[int] = None) -> Callable:
    """A callable ``x -> tuple of tensors`` running an ONNX file in onnxruntime (CPU) or an ExportedProgram."""
    if isinstance(exported, str):
        import onnxruntime as ort
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        sess = ort.InferenceSession(exported, so, providers=['CPUExecutionProvider'])
        in_name = sess.get_inputs()[0].name

        def run(x):
            return tuple(torch.from_numpy(o) for o in sess.run(None, {in_name: x.numpy()}))
        return run
    module = exported.module()

    def run(x):
        with torch.no_grad():
            return _as_tuple(module(x))
    return run


def check_export(model: nn.Module, exported, sizes: Sequence[Tuple[int, int]], batch_size: int = 1,
                 atol: float = 1e-4, seed: int = 0) -> List[ExportCheck]:
    """Run the export against eager ``model`` at each size; max abs diff over every output."""
    run = load_runner(exported)
    g = torch.Generator().manual_seed(seed)
    report = []
    for size in sizes:
        x = torch.randn(batch_size, 3, *size, generator=g)
        with torch.no_grad():
            ref = _as_tuple(model(x))
        try:
            got = run(x)
        except Exception as e:
            report.append(ExportCheck(tuple(size), float('inf'), False, f'{type(e).__name__}: {str(e)[:500]}'))
            continue
        if len(got) != len(ref) or any(a.shape != b.shape for a, b in zip(got, ref)):
            shapes = f'outputs {[tuple(a.shape) for a in got]} != eager {[tuple(b.shape) for b in ref]}'
            report.append(ExportCheck(tuple(size), float('inf'), False, shapes))
            continue
        diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(got, ref))
        report.append(ExportCheck(tuple(size), diff, diff <= atol, shapes=[tuple(b.shape) for b in ref]))
    return report
