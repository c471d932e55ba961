"""Side-by-side onnxruntime timing of ONNX files of one model (e.g. before / after an export change) and eager.

Runs every session and eager PyTorch in one process, interleaved round by round, at each size (batch 1, the same
input), so the ratios hold under a varying machine load; prints a Markdown table (median ms, ratio to eager and to
the first file). Eager runs freshly initialized weights (timing only: check the files' outputs with
``tools/export.py --check``)::

    OMP_NUM_THREADS=1 python tools/benchmark.py export-ab transnext_micro old=a.onnx new=b.onnx --sizes 224
"""
import statistics
import time

import torch

try:
    from .bench_utils import machine_info
except ImportError:  # run through tools/benchmark.py as a script
    from bench_utils import machine_info


def add_export_ab_parser(sub) -> None:
    p = sub.add_parser('export-ab', help='onnxruntime sessions of one model (e.g. before / after) and eager, '
                       'interleaved in one process', description=__doc__)
    p.add_argument('model')
    p.add_argument('files', nargs='+', help='LABEL=PATH.onnx')
    p.add_argument('--sizes', default='224')
    p.add_argument('--rounds', type=int, default=5, help='interleaved rounds (each times every runner once)')
    p.add_argument('--repeat', type=int, default=3, help='runs per runner per round')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--no-eager', action='store_true')


def run_export_ab(args) -> None:
    import onnxruntime as ort
    import timm

    import visionattn  # noqa: F401

    torch.set_num_threads(args.threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = args.threads
    sessions = {}
    for item in args.files:
        label, path = item.split('=', 1)
        sessions[label] = ort.InferenceSession(path, so, providers=['CPUExecutionProvider'])
    model = None if args.no_eager else timm.create_model(args.model, pretrained=False).eval()
    info = machine_info('cpu')
    print(f"{info['date']}, {info['cpu']}, {args.threads} thread(s), torch {info['torch']}, onnxruntime "
          f"{ort.__version__}, load average {[round(v, 2) for v in info['loadavg_1_5_15']]}")
    print('\n| model | size | runner | median ms | eager / runner | runner / first file |')
    print('|---|---|---|---|---|---|')
    for size in (int(s) for s in args.sizes.split(',')):
        torch.manual_seed(0)
        x = torch.randn(1, 3, size, size)
        runners = {}
        if model is not None:
            runners['eager'] = lambda x=x: model(x)
        for label, s in sessions.items():
            feed = {s.get_inputs()[0].name: x.numpy()}
            runners[label] = lambda s=s, feed=feed: s.run(None, feed)[0]
        with torch.no_grad():
            times = {k: [] for k in runners}
            for _ in range(args.rounds):
                for k, f in runners.items():
                    for _ in range(args.repeat):
                        t0 = time.perf_counter()
                        f()
                        times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        first = next(iter(sessions))
        for k, t in med.items():
            eager = f"{med['eager'] / t:.2f}" if 'eager' in med else '-'
            rel = f'{t / med[first]:.2f}' if k != 'eager' else '-'
            print(f'| {args.model} | {size} | {k} | {t:.1f} | {eager} | {rel} |', flush=True)
    info = machine_info('cpu')
    print(f"\nload average at the end {[round(v, 2) for v in info['loadavg_1_5_15']]}")
