#!/usr/bin/env python3
"""Benchmarks of the visionattn ops; each run writes a JSON with the machine, library versions and date.

Subcommands:
    gna   generalized neighborhood attention backends side by side (tools/benchmark_gna.py)
    evit  EViT-DeiT (token reorganization) against DeiT with the same weights (tools/benchmark_evit.py)

Example:
    python tools/benchmark.py gna --device cpu
    python tools/benchmark.py gna --device cuda --dtype float16 --out work_dirs/benchmark/gna_h100.json
    python tools/benchmark.py evit --device cpu --batch-sizes 1,32
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / 'tools'):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from benchmark_evit import add_evit_parser, run_evit  # noqa: E402
from benchmark_gna import add_gna_parser, run_gna  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='cmd', required=True)
    add_gna_parser(sub)
    add_evit_parser(sub)
    args = parser.parse_args(argv)
    if args.cmd == 'gna':
        run_gna(args)
    elif args.cmd == 'evit':
        run_evit(args)


if __name__ == '__main__':
    main()
