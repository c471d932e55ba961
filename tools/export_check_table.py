"""Max abs diff of dynamic-size exports against eager PyTorch: the file behind the README's export check table.

Each row exports a model once with dynamic H and W (``visionattn.export.export``) and compares it with eager float32
at 224x224 and 256x320 (batch 1, seeded input). Writes ``benchmarks/export_check_<date>.{json,md}``:

    python tools/export_check_table.py                                    # the README's rows
    python tools/export_check_table.py --rows agent_deit_tiny:onnx,ravlt_tiny:torch-export:features
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
from visionattn.export import export  # noqa: E402

# model:format[:features] (the README's table)
ROWS = [f'{m}:{f}{feat}' for m in ('agent_deit_tiny', 'va_convit_tiny', 'ravlt_tiny', 'evit_deit_tiny_patch16_224',
                                   'litv2_small', 'sparsifiner_deit_small_patch16_224', 'transnext_micro')
        for f in ('onnx', 'torch-export') for feat in ('', ':features')]
SIZES = [(224, 224), (256, 320)]


def check_row(row: str) -> Dict:
    model, fmt, *rest = row.split(':')
    t0 = time.perf_counter()
    rec = dict(model=model, format=fmt, features_only=bool(rest), sizes=[list(s) for s in SIZES])
    try:
        _, report = export(model, fmt, dynamic=True, features_only=bool(rest), check=SIZES)
        rec.update(diffs=[c.max_abs_diff for c in report], errors=[c.error for c in report])
    except Exception as e:  # the row records what blocked it
        rec.update(diffs=None, errors=[f'{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}'])
    rec['seconds'] = time.perf_counter() - t0
    return rec


def markdown(records: List[Dict], header: str) -> str:
    lines = [f'# Export check ({datetime.date.today().isoformat()})', '', header, '',
             '| model | format | features_only | max abs diff at ' + ' / '.join(f'{h}x{w}' for h, w in SIZES)
             + ' | seconds |', '|---|---|---|---|---:|']
    for r in records:
        if r['diffs'] is None or any(r['errors']):
            got = 'failed: ' + '; '.join(e for e in r['errors'] if e)[:200]
        else:
            got = ' / '.join(f'{d:.1e}' for d in r['diffs'])
        lines.append(f'| `{r["model"]}` | {r["format"]} | {"yes" if r["features_only"] else "no"} | {got} | '
                     f'{r["seconds"]:.0f} |')
    return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--rows', default=','.join(ROWS), help='comma list of model:format[:features]')
    p.add_argument('--out', default=None, help='path without extension (default benchmarks/export_check_<date>)')
    args = p.parse_args(argv)
    out = args.out or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks',
                                   f'export_check_{datetime.date.today().isoformat()}')
    records = []
    for row in args.rows.split(','):
        records.append(check_row(row))
        print(json.dumps(records[-1]), flush=True)
    header = (f'Command: `python tools/export_check_table.py {" ".join(sys.argv[1:] if argv is None else argv)}`; '
              f'torch {torch.__version__}, {torch.get_num_threads()} thread(s), load '
              f'{" ".join(f"{v:.2f}" for v in os.getloadavg())}. Dynamic H and W, batch 1, float32, eager = the '
              'model in eval mode on its default backends.')
    with open(out + '.json', 'w') as f:
        json.dump(dict(header=header, records=records), f, indent=1)
    with open(out + '.md', 'w') as f:
        f.write(markdown(records, header))
    print(f'wrote {out}.json, {out}.md')
    return 0


if __name__ == '__main__':
    sys.exit(main())
