"""Max abs diff of dynamic-size exports against eager PyTorch: the file behind the README's export check table.

Each row exports a model once with dynamic H and W (``visionattn.export.export``) and compares it with eager float32
at 224x224 and 256x320 (batch 1, seeded input). Writes ``benchmarks/export_check_<date>.{json,md}`` after every row;
``--append`` keeps the rows the file already has that passed and runs the others (resume after a kill, or rerun the
failed rows):

    python tools/export_check_table.py                                    # the README's rows
    python tools/export_check_table.py --rows agent_deit_tiny:onnx,ravlt_tiny:torch-export:features
    python tools/export_check_table.py --out benchmarks/export_check_2026-12-02 --append

Sparsifiner's rows run with :func:`unambiguous_ranking` weights (see there): on random weights its top-k selections
are tied in float32, so any two implementations (eager fp32 and fp64 included) keep other keys.
"""
import argparse
import datetime
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import visionattn  # noqa: E402,F401  (registers the models)
from visionattn.export import export, size_multiple  # noqa: E402

# the smallest variant of each family
SMALLEST = [
    'agent_deit_tiny', 'agent_pvt_tiny', 'agent_swin_tiny', 'agent_cswin_tiny', 'biformer_tiny', 'dinat_mini',
    'nat_mini', 'evit_deit_tiny_patch16_224', 'litv2_small', 'ravlt_tiny', 'sparsifiner_deit_small_patch16_224',
    'transnext_micro', 'va_convit_tiny']
# model:format[:features] (the README's table)
ROWS = [f'{m}:{f}{feat}' for m in SMALLEST for f in ('onnx', 'torch-export') for feat in ('', ':features')]
SIZES = [(224, 224), (256, 320)]


def unambiguous_ranking(model: torch.nn.Module) -> torch.nn.Module:
    """Give every Sparsifiner connectivity predictor one key ranking that float32 rounding cannot reorder.

    At its random initialisation the predictor's basis coefficients are a near-uniform softmax (~1/32 each) and the
    key scores ``coef @ basis`` are near-tied: in float32 many rows have a gap of exactly 0 at the top-k boundary, so
    eager fp32 and fp64 already keep other keys (max abs diff 1.5e-4 at 224). With every ``proj_back_n`` column set to
    one increasing ramp over the tokens (above the 0.02 basis threshold), each row's scores are that ramp times a
    positive scalar: the kept keys no longer depend on the tied coefficients, the boundary gap is >= 1e-6 (vs ~1e-9
    of rounding) and the output is a continuous function of the weights again (fp32 vs fp64: 1.3e-6)."""
    from visionattn.models.sparsifiner import MaskPredictor
    for m in model.modules():
        if isinstance(m, MaskPredictor):
            n, r = m.proj_back_n.shape
            ramp = 0.03 + 0.02 * torch.arange(n, dtype=m.proj_back_n.dtype) / n
            with torch.no_grad():
                m.proj_back_n.copy_(ramp[:, None].expand(n, r))
    return model


def build(model: str, features_only: bool):
    """What a row exports: the name (seeded random weights), or for Sparsifiner the model built with
    :func:`unambiguous_ranking`."""
    import timm
    torch.manual_seed(0)
    if not model.startswith('sparsifiner'):
        return model
    return unambiguous_ranking(timm.create_model(model, features_only=features_only).eval())


def check_sizes(model: str) -> List[tuple]:
    """``SIZES``, each side rounded up to the model's ``SIZE_MULTIPLE`` where it has one (Agent-CSwin: 112)."""
    rule = size_multiple(model)
    return [tuple(-(-v // rule[0]) * rule[0] for v in s) if rule else s for s in SIZES]


def check_row(row: str) -> Dict:
    model, fmt, *rest = row.split(':')
    features_only = bool(rest)
    t0, c0 = time.perf_counter(), time.process_time()
    sizes = check_sizes(model)
    rec = dict(model=model, format=fmt, features_only=features_only, sizes=[list(s) for s in sizes])
    rule = size_multiple(model)
    if rule:
        rec['dynamic'] = f'H, W multiples of {rule[0]}, >= {rule[1]}'
    try:
        _, report = export(build(model, features_only), fmt, dynamic=True, features_only=features_only,
                           check=sizes)
        rec.update(diffs=[c.max_abs_diff for c in report], errors=[c.error for c in report])
    except Exception as e:  # the row records what blocked it
        rec.update(diffs=None, errors=[f'{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}'])
    rec['seconds'] = time.perf_counter() - t0
    rec['cpu_seconds'] = time.process_time() - c0  # all threads of the process: less dependent on the load
    return rec


def _passed(r: Dict) -> bool:
    return r.get('diffs') is not None and not any(r['errors']) and max(r['diffs']) <= 1e-4


def markdown(records: List[Dict], header: str) -> str:
    lines = [f'# Export check ({datetime.date.today().isoformat()})', '', header, '',
             '| model | format | features_only | max abs diff at ' + ' / '.join(f'{h}x{w}' for h, w in SIZES)
             + ' | seconds |', '|---|---|---|---|---:|']
    for r in records:
        if r['diffs'] is None or any(r['errors']):
            got = 'failed: ' + '; '.join(e for e in r['errors'] if e)[:200]
        else:
            got = ' / '.join(f'{d:.1e}' for d in r['diffs'])
            if [tuple(x) for x in r['sizes']] != SIZES:
                got += ' (at ' + ' / '.join(f'{h}x{w}' for h, w in r['sizes']) + ')'
        cpu = f' (CPU {r["cpu_seconds"]:.0f})' if 'cpu_seconds' in r else ''
        lines.append(f'| `{r["model"]}` | {r["format"]} | {"yes" if r["features_only"] else "no"} | {got} | '
                     f'{r["seconds"]:.0f}{cpu} |')
    return '\n'.join(lines) + '\n'


def _key(r: Dict) -> str:
    return f'{r["model"]}:{r["format"]}' + (':features' if r['features_only'] else '')


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--rows', default=','.join(ROWS), help='comma list of model:format[:features]')
    p.add_argument('--out', default=None, help='path without extension (default benchmarks/export_check_<date>)')
    p.add_argument('--append', action='store_true',
                   help="keep the file's passed rows (not rerun), run the others, rewrite the file")
    p.add_argument('--merge', default='', help='comma list of JSON files of other runs whose rows (and headers) '
                   'join the output like --append rows; --rows none: only merge')
    args = p.parse_args(argv)
    out = args.out or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks',
                                   f'export_check_{datetime.date.today().isoformat()}')
    rows = [] if args.rows == 'none' else args.rows.split(',')
    done: Dict[str, Dict] = {}
    headers: List[str] = []
    sources = ([out + '.json'] if args.append and os.path.exists(out + '.json') else []) + \
        [m for m in args.merge.split(',') if m]
    for src in sources:
        with open(src) as f:
            old = json.load(f)
        for r in old['records']:
            if _key(r) not in done or _passed(r):
                done[_key(r)] = r
        headers += [h for h in old.get('headers', [old['header']] if 'header' in old else []) if h not in headers]
    cmd = " ".join(sys.argv[1:] if argv is None else argv)
    headers.append(f'Command: `python tools/export_check_table.py {cmd}`; torch {torch.__version__}, '
                   f'{torch.get_num_threads()} thread(s), load {" ".join(f"{v:.2f}" for v in os.getloadavg())} at '
                   f'its start ({datetime.datetime.now(datetime.timezone.utc):%H:%M} UTC).')
    header = (' '.join(headers) + ' Dynamic H and W, batch 1, float32, eager = the model in eval mode on its default '
              'backends; seconds: export plus check, on a loaded machine (CPU: its CPU seconds, all threads).')

    def write():
        order = {r: i for i, r in enumerate(ROWS + rows)}
        records = sorted(done.values(), key=lambda r: order.get(_key(r), len(order)))
        with open(out + '.json', 'w') as f:
            json.dump(dict(headers=headers, header=header, records=records), f, indent=1)
        with open(out + '.md', 'w') as f:
            f.write(markdown(records, header))

    for row in rows:
        if row in done and _passed(done[row]):
            continue
        done[row] = check_row(row)
        print(json.dumps(done[row]), flush=True)
        write()
    write()
    print(f'wrote {out}.json, {out}.md')
    return 0


if __name__ == '__main__':
    sys.exit(main())
