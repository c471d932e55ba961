"""Shared helpers of the benchmark tools: machine/library info for the JSON reports, timing, peak memory."""
import datetime
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

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


def peak_alloc_mib(fn: Callable[[], object]) -> float:
    """Peak of the tensor memory allocated by one call of ``fn`` on CPU, MiB, above what existed before it.

    Replays ``torch.profiler``'s memory timeline (allocations and frees of every tensor made during the call,
    ``profile_memory=True``), so it counts the live tensor bytes at their peak, like CUDA's ``max_memory_allocated``,
    not the process's resident set. Uses the profiler's private ``_memory_profile`` (torch >= 2.1).
    """
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    cur = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            cur += size
        elif action == Action.DESTROY:
            cur -= size
        peak = max(peak, cur)
    return peak / 2 ** 20


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ['| ' + ' | '.join(map(str, headers)) + ' |', '|' + '---|' * len(headers)]
    lines += ['| ' + ' | '.join(map(str, r)) + ' |' for r in rows]
    return '\n'.join(lines) + '\n'


def replace_readme_block(readme: Path, begin: str, end: str, content: str) -> None:
    """Replace the text between the ``begin`` and ``end`` marker lines of ``readme`` with ``content``."""
    text = readme.read_text()
    if begin not in text or end not in text:
        raise ValueError(f'{readme} has no {begin!r} ... {end!r} block')
    head, rest = text.split(begin, 1)
    readme.write_text(head + begin + '\n' + content + end + rest.split(end, 1)[1])


def machine_markdown(info: dict) -> str:
    """One Markdown paragraph with the machine, library versions and date of a report."""
    dev = info.get('gpu') or info.get('cpu')
    return (f"Machine: {dev} ({info.get('cpu_count')} CPUs, torch threads {info.get('torch_threads')}, load average "
            f"{'/'.join(f'{x:.2f}' for x in info.get('loadavg_1_5_15', []))}); {info.get('platform')}; "
            f"python {info.get('python')}, torch {info.get('torch')}, triton {info.get('triton')}"
            + (f", CUDA {info['cuda']}" if info.get('cuda') else '') + f"; {info.get('date')}.\n")


def write_report(report: dict, name: str, device: str, out: str = '', markdown: Optional[str] = None) -> Path:
    """Write a benchmark's JSON report to ``out`` (default ``work_dirs/benchmark/<name>_<device>_<time>.json``);
    with ``markdown``, also ``<same path>.md``: a title, the machine paragraph and ``markdown``."""
    path = Path(out or f'work_dirs/benchmark/{name}_{device}_{datetime.datetime.now():%Y%m%d_%H%M%S}.json')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f'wrote {path}')
    if markdown is not None:
        md = path.with_suffix('.md')
        text = f'# {name} benchmark ({device})\n\n' + machine_markdown(report.get('machine', {})) + '\n' + markdown
        md.write_text(text)
        print(f'wrote {md}')
    return path
