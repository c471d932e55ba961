"""Shared helpers of the benchmark tools: machine/library info for the JSON reports, timing, peak memory."""
import datetime
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Dict, List

import torch


def machine_info(device: str) -> dict:
    info = {
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'platform': platform.platform(),
        'python': platform.python_version(),
        'torch': torch.__version__,
        'cpu_count': os.cpu_count(),
        'torch_threads': torch.get_num_threads(),
        'loadavg_1_5_15': list(os.getloadavg()),
        'device': device,
    }
    try:
        import triton
        info['triton'] = triton.__version__
    except ImportError:
        info['triton'] = None
    try:
        with open('/proc/cpuinfo') as f:
            info['cpu'] = next((ln.split(':', 1)[1].strip() for ln in f if ln.startswith('model name')), None)
    except OSError:
        info['cpu'] = platform.processor()
    if device == 'cuda':
        info['gpu'] = torch.cuda.get_device_name()
        info['cuda'] = torch.version.cuda
    return info


def sync(device):
    if device == 'cuda':
        torch.cuda.synchronize()


def time_ms(fn, device, warmup, repeat):
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def maxrss_mib() -> float:
    """Peak resident set of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def select_shapes(arg: str, table: Dict[str, tuple]) -> List[str]:
    """Shape names from the comma list ``arg`` (default: all but the ``tiny`` smoke shape), checked in ``table``."""
    shapes = arg.split(',') if arg else [s for s in table if s != 'tiny']
    for s in shapes:
        if s not in table:
            raise ValueError(f'unknown shape {s!r}; choose from {list(table)}')
    return shapes


def write_report(report: dict, name: str, device: str, out: str = '') -> Path:
    """Write a benchmark's JSON report to ``out`` (default ``work_dirs/benchmark/<name>_<device>_<time>.json``)."""
    path = Path(out or f'work_dirs/benchmark/{name}_{device}_{datetime.datetime.now():%Y%m%d_%H%M%S}.json')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f'wrote {path}')
    return path
