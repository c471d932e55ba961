"""``python -m visionattn.check``: check and time every op backend and model on this machine, and write a report.

(a) ``ops``: every registered backend of GNA, block-sparse and top-k attention against the oracle computed in float64,
forward and gradients (where the backend has them), fp32 / fp16 / bf16 on CUDA, fp32 / fp64 on CPU. Accuracy rule
(DESIGN.md): fp32 error <= 1e-4; low precision error <= 2x the error of the reference computed in that precision
(plus 1e-6); fp64 <= 1e-10.
(b) ``models``: every registered model (``--quick``: the smallest of each family) built and run forward+backward at
224 and one non-square size (under bf16 autocast on CUDA), finite, and its output equal to the same model's forward
on the ``reference`` backend (fp32) within the rule: on CUDA 2x the reference backend's own autocast error (at least
1e-3 x the output scale), on CPU (fp32) 1e-4 x max(1, output scale); on CPU ``--quick`` compares at the
non-square size only.
(c) ``bench``: timings of each op backend against dense SDPA, FlexAttention and natten (when installed) on the
configs of benchmarks/gna_cpu_2026-11-22.md and bsa_cpu_2026-11-22.md (``--quick``: a subset at batch 1), plus one
training step of nat_tiny, biformer_tiny and transnext_micro (batch 32 on CUDA, 2 on CPU, 1 with ``--quick``).
(d) a JSON and a Markdown report (device, driver, torch / Triton versions, date) in ``--out``.

Needs only torch and timm (triton, natten optional). Exit code 1 when a check fails and ``--strict`` is given.
Examples: ``python -m visionattn.check --quick --out check_out``; ``python -m visionattn.check --only ops --limit 3``.
On a GPU machine, first: ``bash tools/gpu_check.sh`` (``--quick --strict`` with a time budget, then ``pytest -m gpu``).
"""
import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

__all__ = ['main', 'run_checks']

OPS = ('gna', 'block_sparse_attention', 'topk_attention')


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------

_DEADLINE = [math.inf]  # perf_counter() after which the remaining cases are skipped (--budget-s)


def _over_budget() -> bool:
    return time.perf_counter() > _DEADLINE[0]


def _budget_row(**row) -> Dict[str, Any]:
    return dict(row, status='skipped', reason='time budget (--budget-s) spent')


def _tol_ok(err: float, ref_err: float, dtype: torch.dtype) -> Dict[str, Any]:
    if dtype == torch.float64:
        bound = 1e-10
    elif dtype == torch.float32:
        bound = 1e-4
    else:
        bound = 2 * ref_err + 1e-6
    return {'err': err, 'bound': bound, 'ok': bool(err <= bound and math.isfinite(err))}


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def _time(fn: Callable, device, reps: int, slow_s: float = 1.) -> float:
    """Median ms of ``reps`` calls after a warm-up call; a call slower than ``slow_s`` (e.g. eager FlexAttention on
    CPU) is timed once more instead."""
    t = time.perf_counter()
    fn()
    _sync(device)
    if time.perf_counter() - t > slow_s:
        reps = 1
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2] * 1e3


# ---------------------------------------------------------------------------------------------------------------------
# (a) ops against their oracles
# ---------------------------------------------------------------------------------------------------------------------

def _op_cases(op: str, quick: bool) -> List[Dict[str, Any]]:
    """Small cases per op: dicts of the op's arguments as factories of (device, dtype, generator)."""
    if op == 'gna':
        cases = [
            ('1d k5 rpb', (17,), 5, 1, 1, False, True, 0),
            ('2d k3 s2 d2 causal extra', (9, 12), (3, 4), (2, 1), (2, 1), (True, False), True, 2),
            ('2d k7 rpb', (14, 14), 7, 1, 1, False, True, 0),
            ('3d k3', (4, 6, 6), (2, 3, 3), 1, (1, 1, 2), (False, True, False), False, 1),
        ]
        return [dict(name=c[0], shape=c[1], kernel_size=c[2], stride=c[3], dilation=c[4], is_causal=c[5], rpb=c[6],
                     extra=c[7]) for c in (cases[:3] if quick else cases)]
    if op == 'block_sparse_attention':
        cases = [('Tq4 topk3 dup', 6, 4, 7, 4, 3, False), ('Tq16 topk4 bias mask', 8, 16, 8, 16, 4, True)]
        return [dict(name=c[0], nq=c[1], tq=c[2], nk=c[3], tk=c[4], topk=c[5], extras=c[6]) for c in cases]
    cases = [('N50 K8', 50, 8, 0), ('N65 K16 cls', 65, 16, 1)]
    return [dict(name=c[0], n=c[1], k=c[2], num_dense=c[3]) for c in cases]


def _op_inputs(op: str, case: Dict[str, Any], device, dtype, heads=2, d=16):
    """``(call kwargs without backend, tensors that take gradients)`` for ``op``; same values for every dtype."""
    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device, dtype)
    if op == 'gna':
        from .ops.neighborhood import _check_and_normalize
        shape = case['shape']
        n = len(shape)
        q, k, v = mk(2, *shape, heads, d), mk(2, *shape, heads, d), mk(2, *shape, heads, d)
        ks = case['kernel_size'] if isinstance(case['kernel_size'], tuple) else (case['kernel_size'],) * n
        rpb = mk(heads, *[2 * x - 1 for x in ks]) if case['rpb'] else None
        ak, av = (mk(2, case['extra'], heads, d), mk(2, case['extra'], heads, d)) if case['extra'] else (None, None)
        ks, st, dil, causal, scale = _check_and_normalize(
            n, q, k, v, case['kernel_size'], case['stride'], case['dilation'], case['is_causal'], rpb, None, ak, av)
        call = dict(query=q, key=k, value=v, kernel_size=ks, stride=st, dilation=dil, is_causal=causal, rpb=rpb,
                    scale=scale, additional_keys=ak, additional_values=av)
        return call, [x for x in (q, k, v, rpb, ak, av) if x is not None]
    if op == 'block_sparse_attention':
        q, k, v = mk(2, case['nq'], case['tq'], heads, d), mk(2, case['nk'], case['tk'], heads, d), \
            mk(2, case['nk'], case['tk'], heads, d)
        idx = torch.randint(0, case['nk'], (2, heads, case['nq'], case['topk']), generator=g)
        idx[:, :, 0, :2] = 1  # a block listed twice
        bias = mk(2, heads, case['nq'], case['topk']) if case['extras'] else None
        km = (torch.rand(2, case['nk'], case['tk'], generator=g) > 0.2).to(device) if case['extras'] else None
        call = dict(query=q, key=k, value=v, block_index=idx.to(device), scale=d ** -0.5, bias=bias, key_mask=km)
        return call, [x for x in (q, k, v, bias) if x is not None]
    n, kk = case['n'], case['k']
    q, k, v = mk(2, n, heads, d), mk(2, n, heads, d), mk(2, n, heads, d)
    idx = torch.rand(2, heads, n - case['num_dense'], n, generator=g).argsort(-1)[..., :kk].to(device)
    call = dict(query=q, key=k, value=v, index=idx, scale=d ** -0.5, num_dense=case['num_dense'], dropout_p=0.)
    return call, [q, k, v]


def _run_op(op: str, backend: str, call: Dict[str, Any]):
    """One call of ``backend`` with the op's calling convention (the functions the registry holds)."""
    from .ops._dispatch import _REGISTRY
    fn = _REGISTRY[op][backend].fn
    if op == 'block_sparse_attention':
        return fn(call['query'], call['key'], call['value'], call['block_index'], call['scale'], call['bias'],
                  call['key_mask'])
    if op == 'topk_attention':
        return fn(call['query'], call['key'], call['value'], call['index'], call['scale'], call['num_dense'],
                  call['dropout_p'])
    return fn(**call)


def _unsupported(op: str, backend: str, call: Dict[str, Any]) -> Optional[str]:
    from .ops._dispatch import _REGISTRY
    b = _REGISTRY[op][backend]
    probe = {k: v for k, v in call.items() if k != 'scale' or op == 'gna'}
    return b.unsupported(**probe) if b.unsupported is not None else None


# --quick: backends checked on the first case of each op only, by device type. On CUDA ``flex`` is torch.compile'd:
# each new shape and dtype is a fresh inductor compile (tens of seconds on a cold cache), which alone would spend the
# 5-minute budget; its first case still covers forward and gradients in every dtype.
_QUICK_FIRST_CASE_ONLY = {'cuda': ('flex',)}


def check_ops(device, quick: bool, limit: Optional[int], log) -> List[Dict[str, Any]]:
    import visionattn.ops  # noqa: F401  (registers every backend)

    from .ops._dispatch import list_backends
    dtypes = [torch.float32, torch.float16, torch.bfloat16] if device.type == 'cuda' else [torch.float32, torch.float64]
    rows = []
    for op in OPS:
        for i, case in enumerate(_op_cases(op, quick)[:limit]):
            if _over_budget():
                rows.append(_budget_row(section='ops', op=op, case=case['name'], backend='*', dtype='*',
                                        device=device.type))
                continue
            for dtype in dtypes:
                call64, ins64 = _op_inputs(op, case, device, torch.float64)
                ins64 = [x.requires_grad_() for x in ins64]
                ref = _run_op(op, 'reference', call64)
                go = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
                ref_grads = torch.autograd.grad(ref, ins64, go.to(ref.dtype))
                low_err = None
                for backend in list_backends(op):
                    if quick and i and backend in _QUICK_FIRST_CASE_ONLY.get(device.type, ()):
                        continue
                    row = dict(section='ops', op=op, case=case['name'], backend=backend, dtype=str(dtype)[6:],
                               device=device.type)
                    call, ins = _op_inputs(op, case, device, dtype)
                    grad = True
                    ins = [x.requires_grad_() for x in ins]
                    reason = _unsupported(op, backend, call)
                    if reason is not None:
                        with torch.no_grad():
                            reason_ng = _unsupported(op, backend, call)
                        if reason_ng is None:
                            grad = False
                        else:
                            rows.append(dict(row, status='skipped', reason=reason))
                            continue
                    try:
                        t = time.perf_counter()
                        with torch.set_grad_enabled(grad):
                            out = _run_op(op, backend, call)
                            grads = torch.autograd.grad(out, ins, go.to(out.dtype), allow_unused=True) if grad else []
                        errs = [_maxdiff(out, ref)] + [0. if g is None else _maxdiff(g, r)
                                                       for g, r in zip(grads, ref_grads)]
                        if backend == 'reference':
                            low_err = errs
                        lows = low_err or [0.] * len(errs)
                        checks = [_tol_ok(e, le, dtype) for e, le in zip(errs, lows)]
                        ok = all(c['ok'] for c in checks) and bool(torch.isfinite(out).all())
                        rows.append(dict(row, status='pass' if ok else 'FAIL', grad=grad,
                                         fwd_err=errs[0], fwd_bound=checks[0]['bound'],
                                         grad_err=max(errs[1:], default=None),
                                         grad_bound=max((c['bound'] for c in checks[1:]), default=None),
                                         seconds=time.perf_counter() - t))
                    except Exception as e:
                        rows.append(dict(row, status='FAIL', error=f'{type(e).__name__}: {str(e)[:300]}'))
                    log(rows[-1])
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# (b) models
# ---------------------------------------------------------------------------------------------------------------------

_SIZE_ORDER = ('mini', 'micro', 'tiny', 'small', 'medium', 'base', 'large')


def _quick_models(names: List[str]) -> List[str]:
    fams: Dict[str, List[str]] = {}
    for n in names:
        fams.setdefault(n.split('_')[0], []).append(n)

    def rank(n):
        for i, s in enumerate(_SIZE_ORDER):
            if s in n.split('_'):
                return (i, len(n), n)
        return (len(_SIZE_ORDER), len(n), n)
    return [sorted(v, key=rank)[0] for v in fams.values()]


def check_models(device, quick: bool, limit: Optional[int], log) -> List[Dict[str, Any]]:
    import timm

    import visionattn

    from .ops import force_backend
    names = visionattn.list_models()
    names = _quick_models(names) if quick else names
    rows = []
    amp = device.type == 'cuda'
    sizes = [(224, 224), (192, 256)]
    for name in names[:limit]:
        if _over_budget():
            rows.append(_budget_row(section='models', model=name, size='*', device=device.type, autocast='-'))
            continue
        for size in sizes:
            row = dict(section='models', model=name, size=f'{size[0]}x{size[1]}', device=device.type,
                       autocast='bf16' if amp else 'off')
            t = time.perf_counter()
            try:
                torch.manual_seed(0)
                model = timm.create_model(name, pretrained=False, img_size=size) if 'evit' in name or 'deit' in name \
                    else timm.create_model(name, pretrained=False)
                model = model.to(device).eval()
                x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)

                def run(reference: bool, autocast: bool, grad: bool, model=model, x=x):
                    model.zero_grad(set_to_none=True)
                    ctx = force_backend('reference') if reference else _null()
                    with ctx, torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast), \
                            torch.set_grad_enabled(grad):
                        y = model(x)
                    if not grad:
                        return y.float(), None
                    y.float().sum().backward()
                    g = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
                    return y.detach().float(), g
                # fast backends: forward + backward (finite); the reference backend: forward only (the O(tokens^2)
                # oracles dominate the run time), in fp32, and under autocast for the low-precision bound
                y, g = run(False, amp, True)
                finite = bool(torch.isfinite(y).all() and torch.isfinite(g).all())
                err = bound = None
                ok = finite
                # CPU --quick: the oracle comparison at the non-square size only (the 224 run: finite)
                if not (quick and device.type == 'cpu' and size == sizes[0]):
                    y_ref, _ = run(True, False, False)
                    err = _maxdiff(y, y_ref)
                    scale = float(y_ref.abs().max()) + 1e-6
                    if amp:
                        y_low, _ = run(True, True, False)
                        bound = max(2 * _maxdiff(y_low, y_ref), 1e-3 * scale)
                    else:
                        bound = 1e-4 * max(scale, 1.)
                    ok = finite and err <= bound
                rows.append(dict(row, status='pass' if ok else 'FAIL', finite=finite, err=err, bound=bound,
                                 seconds=time.perf_counter() - t))
            except Exception as e:
                rows.append(dict(row, status='FAIL', error=f'{type(e).__name__}: {str(e)[:300]}',
                                 trace=traceback.format_exc()[-800:], seconds=time.perf_counter() - t))
            log(rows[-1])
    return rows


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


# ---------------------------------------------------------------------------------------------------------------------
# (c) timings
# ---------------------------------------------------------------------------------------------------------------------

# the configs of benchmarks/gna_cpu_2026-11-22.md: (name, batch, spatial, heads, dim, kernel, stride, dilation, rpb)
GNA_CONFIGS = [
    ('na2d_56_k7', 4, (56, 56), 2, 32, 7, 1, 1, False),
    ('na2d_28_k7_d2', 4, (28, 28), 4, 32, 7, 1, 2, False),
    ('na3d_16x32x32_k377', 1, (16, 32, 32), 2, 32, (3, 7, 7), 1, 1, False),
    ('na1d_4096_k127', 1, (4096,), 2, 32, 127, 1, 1, False),
    ('na2d_56_k8_s4', 4, (56, 56), 2, 32, 8, 4, 1, False),
    ('nat_s1', 2, (56, 56), 2, 32, 7, 1, 1, True),
]
# benchmarks/bsa_cpu_2026-11-22.md: (name, batch, regions per side (S), tokens per region side, heads, dim, topk)
BSA_CONFIGS = [
    ('in224_56_topk4', 4, 7, 8, 2, 32, 4),
    ('in224_56_topk16', 4, 7, 8, 2, 32, 16),
    ('ade512_s1', 1, 8, 16, 2, 32, 1),
    ('in224_s2', 4, 7, 4, 4, 32, 4),
    ('in224_s3', 4, 7, 2, 8, 32, 16),
]
QUICK_GNA = ('na2d_28_k7_d2', 'nat_s1')
QUICK_BSA = ('in224_s2', 'in224_s3')


def _bench_backends(op, call, run, device, reps, dense_fn, flex_ok=True):
    from .ops._dispatch import list_backends
    out = {}
    for backend in list_backends(op) + ['dense_sdpa']:
        if backend == 'reference':
            continue
        try:
            if backend == 'dense_sdpa':
                out[backend] = _time(dense_fn, device, reps)
                continue
            if backend == 'flex' and not flex_ok:
                out[backend] = 'n/a: --quick times flex on the first config of each op only'
                continue
            reason = _unsupported(op, backend, call)
            if reason:
                out[backend] = f'n/a: {reason[:120]}'
                continue
            out[backend] = _time(lambda b=backend: run(b), device, reps)
        except Exception as e:
            out[backend] = f'error: {type(e).__name__}: {str(e)[:160]}'
    return out


def check_bench(device, quick: bool, limit: Optional[int], log) -> List[Dict[str, Any]]:
    import visionattn.ops  # noqa: F401
    rows = []
    reps = 3 if quick else 5
    dtype = torch.float16 if device.type == 'cuda' else torch.float32
    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g).to(device, dtype)
    gna = [c for c in GNA_CONFIGS if not quick or c[0] in QUICK_GNA]
    for i, (name, b, shape, heads, d, ks, st, dil, rpb) in enumerate(gna[:limit]):
        if _over_budget():
            rows.append(_budget_row(section='bench', op='gna', config=name, batch=b, mode='fwd'))
            continue
        b = 1 if quick else b
        n = len(shape)
        q = mk(b, *shape, heads, d)
        kst = ks if isinstance(ks, tuple) else (ks,) * n
        call = dict(query=q, key=q, value=q, kernel_size=kst, stride=(st,) * n, dilation=(dil,) * n,
                    is_causal=(False,) * n, rpb=mk(heads, *[2 * x - 1 for x in kst]) if rpb else None,
                    scale=d ** -0.5, additional_keys=None, additional_values=None)
        qd = q.reshape(b, -1, heads, d).transpose(1, 2)
        with torch.no_grad():
            times = _bench_backends('gna', call, lambda be, c=call: _run_op('gna', be, c), device, reps,
                                    lambda qd=qd: F.scaled_dot_product_attention(qd, qd, qd), not (quick and i))
        rows.append(dict(section='bench', op='gna', config=name, batch=b, mode='fwd', dtype=str(dtype)[6:],
                         times_ms=times, status='pass'))
        log(rows[-1])
    bsa = [c for c in BSA_CONFIGS if not quick or c[0] in QUICK_BSA]
    for i, (name, b, s, t, heads, d, topk) in enumerate(bsa[:limit]):
        if _over_budget():
            rows.append(_budget_row(section='bench', op='block_sparse_attention', config=name, batch=b, mode='fwd'))
            continue
        b = 1 if quick else b
        nb = s * s
        q = mk(b, nb, t * t, heads, d)
        idx = torch.rand(b, 1, nb, nb, generator=g).argsort(-1)[..., :topk].to(device)
        call = dict(query=q, key=q, value=q, block_index=idx, scale=d ** -0.5, bias=None, key_mask=None)
        qd = q.reshape(b, -1, heads, d).transpose(1, 2)
        with torch.no_grad():
            times = _bench_backends('block_sparse_attention', call,
                                    lambda be, c=call: _run_op('block_sparse_attention', be, c), device, reps,
                                    lambda qd=qd: F.scaled_dot_product_attention(qd, qd, qd), not (quick and i))
        rows.append(dict(section='bench', op='block_sparse_attention', config=name, batch=b, mode='fwd',
                         dtype=str(dtype)[6:], times_ms=times, status='pass'))
        log(rows[-1])
    import timm
    batch = 32 if device.type == 'cuda' else (1 if quick else 2)
    for name in ['nat_tiny', 'biformer_tiny', 'transnext_micro'][:limit]:
        row = dict(section='bench', op='train_step', config=name, batch=batch, mode='fwd+bwd+sgd')
        if _over_budget():
            rows.append(_budget_row(**row))
            continue
        try:
            model = timm.create_model(name, pretrained=False).to(device).train()
            opt = torch.optim.SGD(model.parameters(), lr=1e-3)
            x = torch.randn(batch, 3, 224, 224, device=device)
            y = torch.randint(0, 1000, (batch,), device=device)

            def step(model=model, opt=opt, x=x, y=y):
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == 'cuda'):
                    loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
            ms = _time(step, device, 1 if quick or device.type == 'cpu' else 5)
            mem = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == 'cuda' else None
            rows.append(dict(row, status='pass', times_ms={'step': ms}, peak_mib=mem))
        except Exception as e:
            rows.append(dict(row, status='FAIL', error=f'{type(e).__name__}: {str(e)[:300]}'))
        log(rows[-1])
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# (d) report
# ---------------------------------------------------------------------------------------------------------------------

def environment(device) -> Dict[str, Any]:
    env = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
               python=platform.python_version(), platform=platform.platform(), torch=torch.__version__,
               device=device.type, threads=torch.get_num_threads(), cpu=platform.processor() or platform.machine())
    try:
        import triton
        env['triton'] = triton.__version__
    except Exception:
        env['triton'] = None
    try:
        import timm
        env['timm'] = timm.__version__
    except Exception:
        env['timm'] = None
    try:
        import natten
        env['natten'] = getattr(natten, '__version__', '?')
    except Exception:
        env['natten'] = None
    if device.type == 'cuda':
        p = torch.cuda.get_device_properties(device)
        env.update(device_name=p.name, capability=f'sm_{p.major}{p.minor}', cuda=torch.version.cuda,
                   memory_gib=round(p.total_memory / 2 ** 30, 1))
        try:
            import subprocess
            env['driver'] = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                                           capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception:
            env['driver'] = None
    else:
        env['device_name'] = env['cpu']
    return env


def _fmt(v):
    if isinstance(v, float):
        return f'{v:.3g}'
    return '' if v is None else str(v)


def write_report(out_dir: str, env: Dict[str, Any], rows: List[Dict[str, Any]], seconds: float) -> Dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    fails = [r for r in rows if r.get('status') == 'FAIL']
    report = dict(environment=env, seconds=seconds, n_checks=len(rows), n_failed=len(fails), results=rows)
    jpath, mpath = os.path.join(out_dir, 'check.json'), os.path.join(out_dir, 'check.md')
    with open(jpath, 'w') as f:
        json.dump(report, f, indent=1, default=str)
    lines = [f'# visionattn check ({env.get("device_name")})', '',
             ', '.join(f'{k} {v}' for k, v in env.items() if v is not None), '',
             f'{len(rows)} checks, {len(fails)} failed, {seconds:.0f} s.', '']
    ops = [r for r in rows if r['section'] == 'ops']
    if ops:
        lines += ['## Ops against the oracle', '', '| op | case | backend | dtype | status | fwd err / bound | '
                  'grad err / bound | note |', '|---|---|---|---|---|---|---|---|']
        for r in ops:
            note = r.get('reason') or r.get('error') or ('' if r.get('grad', True) else 'forward only')
            lines.append(f'| {r["op"]} | {r["case"]} | {r["backend"]} | {r["dtype"]} | {r["status"]} | '
                         f'{_fmt(r.get("fwd_err"))} / {_fmt(r.get("fwd_bound"))} | {_fmt(r.get("grad_err"))} / '
                         f'{_fmt(r.get("grad_bound"))} | {note} |')
        lines.append('')
    models = [r for r in rows if r['section'] == 'models']
    if models:
        lines += ['## Models (fast backends vs the reference backend)', '',
                  '| model | size | autocast | status | err / bound | s | note |', '|---|---|---|---|---|---|---|']
        for r in models:
            lines.append(f'| {r["model"]} | {r["size"]} | {r["autocast"]} | {r["status"]} | {_fmt(r.get("err"))} / '
                         f'{_fmt(r.get("bound"))} | {_fmt(r.get("seconds"))} | {r.get("error", "")} |')
        lines.append('')
    bench = [r for r in rows if r['section'] == 'bench']
    if bench:
        lines += ['## Timings (median ms)', '']
        for r in bench:
            t = r.get('times_ms') or {}
            cells = ', '.join(f'{k} {_fmt(v)}' for k, v in t.items())
            lines.append(f'- {r["op"]} {r["config"]} (batch {r["batch"]}, {r["mode"]}): {cells} '
                         f'{r.get("error", "")}')
        lines.append('')
    with open(mpath, 'w') as f:
        f.write('\n'.join(lines))
    return dict(json=jpath, markdown=mpath)


def run_checks(device: str = 'auto', quick: bool = False, only: Optional[List[str]] = None,
               limit: Optional[int] = None, out: str = 'check_out', verbose: bool = True,
               budget_s: Optional[float] = None) -> Dict[str, Any]:
    """Run the checks; return the report (and write it to ``out``). With ``budget_s``, the cases not started within
    that many seconds are reported as skipped (the report is always written)."""
    dev = torch.device('cuda' if device == 'auto' and torch.cuda.is_available() else
                       ('cpu' if device == 'auto' else device))
    sections = only or ['ops', 'models', 'bench']
    t0 = time.perf_counter()
    _DEADLINE[0] = t0 + budget_s if budget_s else math.inf

    def log(r):
        if verbose:
            keys = ('section', 'op', 'model', 'case', 'config', 'size', 'backend', 'dtype', 'status')
            print(' '.join(str(r[k]) for k in keys if k in r), f'({time.perf_counter() - t0:.0f} s)',
                  r.get('error', ''), flush=True)
    rows: List[Dict[str, Any]] = []
    fns = dict(ops=check_ops, models=check_models, bench=check_bench)
    section_s = {}
    for s in sections:
        t = time.perf_counter()
        rows += fns[s](dev, quick, limit, log)
        section_s[s] = round(time.perf_counter() - t, 1)
    env = environment(dev)
    env['section_seconds'] = section_s  # the ops section's first CPU run includes building the C++ kernels
    seconds = time.perf_counter() - t0
    paths = write_report(out, env, rows, seconds)
    return dict(environment=env, results=rows, paths=paths, seconds=seconds,
                n_failed=sum(r.get('status') == 'FAIL' for r in rows))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='python -m visionattn.check', description=__doc__.split('\n')[0])
    p.add_argument('--quick', action='store_true', help='a subset sized for < 5 min on a GPU, < 10 min on CPU')
    p.add_argument('--only', nargs='+', choices=['ops', 'models', 'bench'], help='sections to run')
    p.add_argument('--limit', type=int, default=None, help='at most this many cases / models / configs per list')
    p.add_argument('--device', default='auto', help="'auto' (CUDA when available), 'cpu', 'cuda'")
    p.add_argument('--out', default='check_out', help='folder of check.json and check.md')
    p.add_argument('--strict', action='store_true', help='exit code 1 when any check fails')
    p.add_argument('--quiet', action='store_true')
    p.add_argument('--budget-s', type=float, default=None,
                   help='skip (and report as skipped) the cases not started within this many seconds')
    a = p.parse_args(argv)
    rep = run_checks(a.device, a.quick, a.only, a.limit, a.out, not a.quiet, a.budget_s)
    print(f'{rep["n_failed"]} failed of {len(rep["results"])} checks in {rep["seconds"]:.0f} s; report: '
          f'{rep["paths"]["markdown"]}')
    return 1 if a.strict and rep['n_failed'] else 0


if __name__ == '__main__':
    sys.exit(main())
