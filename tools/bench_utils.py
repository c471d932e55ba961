"""Shared helpers of the benchmark tools: machine/library info for the JSON reports, timing, peak memory."""
import datetime
import os
import platform
import resource
import statistics
import time

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
