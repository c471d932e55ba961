"""Deployment benchmark: onnxruntime (CPU) against eager PyTorch and torch.compile, batch 1, one model per family.

Each model is exported once with dynamic height and width (``visionattn.export``), then the same ONNX file runs at
every size; eager and torch.compile run the same weights. Writes a JSON (machine, versions, date) and a Markdown
table; ratios are eager time / onnxruntime time and eager / compile.
"""
import json
import time
from pathlib import Path

import torch
from bench_utils import machine_info, time_ms

DEFAULT_MODELS = (
    'agent_pvt_tiny,biformer_tiny,dinat_mini,nat_mini,evit_deit_tiny_patch16_224,litv2_small,ravlt_tiny,'
    'sparsifiner_deit_small_patch16_224,transnext_micro,va_convit_tiny')


def add_export_parser(sub):
    p = sub.add_parser('export', help='onnxruntime CPU vs eager PyTorch vs torch.compile, batch 1')
    p.add_argument('--models', default=DEFAULT_MODELS, help='comma-separated model names (one per family)')
    p.add_argument('--sizes', default='224,512', help='comma-separated square sizes')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--repeat', type=int, default=10)
    p.add_argument('--threads', type=int, default=1, help='threads of torch and onnxruntime (the same for both)')
    p.add_argument('--no-compile', action='store_true', help='skip torch.compile')
    p.add_argument('--out', default='', help='JSON path (default: benchmarks/export_cpu_<time>.json; .md beside it)')
    return p


def run_export(args):
    import onnxruntime as ort
    import timm

    import visionattn  # noqa: F401
    from visionattn.export import export, load_runner

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(',')]
    rows = []
    for name in args.models.split(','):
        torch.manual_seed(0)
        model = timm.create_model(name).eval()
        t0 = time.perf_counter()
        try:
            path = export(model, 'onnx', dynamic=True)
        except Exception as e:  # record and go on: one failing family must not hide the others
            rows.append(dict(model=name, error=f'{type(e).__name__}: {str(e)[:300]}'))
            continue
        export_s = time.perf_counter() - t0
        run = load_runner(path, threads=args.threads)
        compiled = None if args.no_compile else torch.compile(model, dynamic=False)
        for s in sizes:
            x = torch.randn(1, 3, s, s)
            row = dict(model=name, size=s, export_s=round(export_s, 1))
            with torch.no_grad():
                ref = model(x)
                row['max_abs_diff'] = float((run(x)[0] - ref).abs().max())
                row['eager_ms'] = time_ms(lambda: model(x), 'cpu', args.warmup, args.repeat)  # noqa: B023
                row['ort_ms'] = time_ms(lambda: run(x), 'cpu', args.warmup, args.repeat)  # noqa: B023
                if compiled is not None:
                    try:
                        row['compile_ms'] = time_ms(
                            lambda: compiled(x), 'cpu', max(args.warmup, 1), args.repeat)  # noqa: B023
                    except Exception as e:
                        row['compile_error'] = f'{type(e).__name__}: {str(e)[:200]}'
            rows.append(row)
            print(json.dumps(row), flush=True)
    info = machine_info('cpu')
    info['onnxruntime'] = ort.__version__
    info['threads'] = args.threads
    out = Path(args.out or f'benchmarks/export_cpu_{time.strftime("%Y%m%d_%H%M%S")}.json')
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(machine=info, args=vars(args), results=rows), indent=1, default=str))
    out.with_suffix('.md').write_text(_markdown(info, rows))
    print(f'wrote {out} and {out.with_suffix(".md")}')


def _markdown(info, rows) -> str:
    lines = [
        f'# Deployment benchmark (CPU, batch 1, {info["threads"]} thread(s))', '',
        f'{info["date"]}, {info.get("cpu")}, torch {info["torch"]}, onnxruntime {info["onnxruntime"]}, '
        f'load average {info["loadavg_1_5_15"]}', '',
        '| model | size | eager ms | torch.compile ms | onnxruntime ms | eager / ort | eager / compile '
        '| ort max diff |',
        '|---|---|---|---|---|---|---|---|']
    for r in rows:
        if 'error' in r:
            lines.append(f'| {r["model"]} | - | export failed: {r["error"][:80]} | | | | | |')
            continue
        c = r.get('compile_ms')
        comp = '-' if c is None else f'{c:.1f}'
        comp_ratio = '-' if c is None else f'{r["eager_ms"] / c:.2f}'
        lines.append(
            f'| {r["model"]} | {r["size"]} | {r["eager_ms"]:.1f} | {comp} | {r["ort_ms"]:.1f} | '
            f'{r["eager_ms"] / r["ort_ms"]:.2f} | {comp_ratio} | {r["max_abs_diff"]:.1e} |')
    return '\n'.join(lines) + '\n'
