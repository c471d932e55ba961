#!/usr/bin/env python3
"""Benchmarks of the visionattn ops; each run writes a JSON with the machine, library versions and date.

Subcommands:
    gna   generalized neighborhood attention backends side by side with natten and dense SDPA on the same tokens
          (tools/benchmark_gna.py)
    bsa   block-sparse attention backends on BiFormer's routing shapes: official gather vs blocked vs Triton vs dense
          SDPA (tools/benchmark_bsa.py)
    bsa-paths  the fused CPU block-sparse kernel's row and GEMM paths against blocked, one core
          (tools/benchmark_bsa_paths.py)
    demo  cost of one training iteration of the `make demo` config and its variants, side by side
          (tools/benchmark_demo.py)
    evit  EViT-DeiT against DeiT with the same weights, batch 1 and 32 (tools/benchmark_evit.py)
    export-ab  onnxruntime sessions of ONNX files of one model (e.g. before / after an export change) and eager,
          interleaved round by round in one process (tools/benchmark_export_ab.py)
    sparsifiner  Sparsifiner's top-k sparse attention (op, attention layer, whole model) against dense DeiT-S with the
          same weights at keep rates 0.25 and 0.5, batch 1 and 32 (tools/benchmark_sparsifiner.py)
    models  throughput, latency and peak memory of whole models over sizes, batches, dtypes, backends, train or
          inference, with a table and a PNG plot (tools/benchmark_models.py)

Examples:
    python tools/benchmark.py gna --device cpu   # JSON + Markdown table under work_dirs/benchmark/
    python tools/benchmark.py bsa --device cuda --dtype float16 --out work_dirs/benchmark/bsa_h100.json
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / 'tools'):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

if __package__:  # imported as tools.benchmark
    from .benchmark_bsa import add_bsa_parser, bsa_main
    from .benchmark_bsa_paths import add_bsa_paths_parser, run_bsa_paths
    from .benchmark_demo import add_demo_parser, run_demo
    from .benchmark_evit import add_evit_parser, run_evit
    from .benchmark_export_ab import add_export_ab_parser, run_export_ab
    from .benchmark_gna import add_gna_parser, run_gna
    from .benchmark_models import add_models_parser, run_models
    from .benchmark_sparsifiner import add_sparsifiner_parser, run_sparsifiner
else:  # run as a script: python tools/benchmark.py
    from benchmark_bsa import add_bsa_parser, bsa_main
    from benchmark_bsa_paths import add_bsa_paths_parser, run_bsa_paths
    from benchmark_demo import add_demo_parser, run_demo
    from benchmark_evit import add_evit_parser, run_evit
    from benchmark_export_ab import add_export_ab_parser, run_export_ab
    from benchmark_gna import add_gna_parser, run_gna
    from benchmark_models import add_models_parser, run_models
    from benchmark_sparsifiner import add_sparsifiner_parser, run_sparsifiner
# the export helper's module, always from the tools folder
from benchmark_export import add_export_parser, run_export  # noqa: E402

COMMANDS = {
    'gna': (add_gna_parser, run_gna), 'bsa': (add_bsa_parser, bsa_main),
    'bsa-paths': (add_bsa_paths_parser, run_bsa_paths), 'evit': (add_evit_parser, run_evit),
    'demo': (add_demo_parser, run_demo),
    'models': (add_models_parser, run_models), 'sparsifiner': (add_sparsifiner_parser, run_sparsifiner),
    'export': (add_export_parser, run_export), 'export-ab': (add_export_ab_parser, run_export_ab)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='cmd', required=True)
    for add_parser, _ in COMMANDS.values():
        add_parser(sub)
    args = parser.parse_args(argv)
    COMMANDS[args.cmd][1](args)


if __name__ == '__main__':
    main()
