"""Size and precision fuzz of every registered visionattn model.

Each call builds a model (classifier or ``features_only``), feeds a seeded random batch (1 to 3 images) of a seeded
random size (H, W in 32..1024 per axis, primes and extreme aspect ratios included) in eval or train mode, in float32 or
under CPU autocast (bfloat16, float16), runs forward and, in train mode, backward of the outputs' means. A call
passes when the outputs and the gradients are finite (features_only: NCHW maps with ``feature_info``'s channels and
the batch size), or when the model refuses the size with a ValueError that names the size rule. Anything else is a
failure.

    python tools/fuzz_sizes.py --shapes 200                      # every model, 200 shapes each: the slow report
    python tools/fuzz_sizes.py --models nat_mini,biformer_tiny --shapes 5 --max-side 128

writes ``benchmarks/fuzz_sizes_<date>.md`` (``--out``) with totals and a per-model table, and exits 1 on a failure.
Long runs: ``--jsonl`` appends every call as it ends (``--resume`` skips the calls it holds), ``--deadline HH:MM``
(UTC) shares the time fairly (the model with the least fuzz time so far runs next, so a slow model gets fewer shapes
than ``--shapes`` when time runs out; the report says so), ``--report-from`` rewrites the report from a JSONL file:

    taskset -c 1 python tools/fuzz_sizes.py --models smallest --jsonl fuzz.jsonl --deadline 05:30
    python tools/fuzz_sizes.py --report-from fuzz.jsonl

Every call reseeds torch (``seed + index``) and restores the model's buffers (train-mode calls update normalization
statistics), so a call depends on nothing that ran before it and ``--models NAME --only INDEX`` replays it alone.
"""
import argparse
import datetime
import json
import math
import os
import random
import sys
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import timm  # noqa: E402

import visionattn  # noqa: E402

# the smallest variant of each family (the default test tier fuzzes these)
SMALLEST = {
    'agent_deit': 'agent_deit_tiny', 'agent_pvt': 'agent_pvt_tiny', 'agent_swin': 'agent_swin_tiny',
    'agent_cswin': 'agent_cswin_tiny', 'biformer': 'biformer_tiny', 'nat': 'nat_mini', 'dinat': 'dinat_mini',
    'dinat_s': 'dinat_s_tiny', 'nat_isotropic': 'nat_isotropic_small', 'evit': 'evit_deit_tiny_patch16_224',
    'litv2': 'litv2_small', 'ravlt': 'ravlt_tiny', 'sparsifiner': 'sparsifiner_deit_small_patch16_224',
    'transnext': 'transnext_micro', 'convit': 'va_convit_tiny',
}
# token pruning (EViT, Sparsifiner) keeps tokens by score: a rounding in bf16/fp16 flips choices, so their outputs
# differ from float32 by more than rounding (0.05 to 0.2 measured at 64x96) without a bug; no precision check there
PRECISION_EXEMPT = ('evit', 'sparsifiner')
SIZE_RULE_WORDS = ('divisible', 'multiple', 'at least', 'minimum', 'too small', 'size', 'smaller', 'larger')
DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
PRIMES = [p for p in range(32, 1025) if all(p % d for d in range(2, int(math.isqrt(p)) + 1))]


def sizes(n: int, seed: int, lo: int = 32, hi: int = 1024) -> List[Tuple[int, int]]:
    """`n` seeded (H, W): fixed corner cases first (lo and hi, primes, extreme aspect ratios), then uniform draws."""
    rng = random.Random(seed)
    primes = [p for p in PRIMES if lo <= p <= hi] or [lo]
    corners = [(lo, lo), (lo, hi), (hi, lo), (rng.choice(primes), rng.choice(primes)), (lo + 1, hi - 1),
               (rng.choice(primes), lo), (hi, hi)]
    out = corners[:n]
    while len(out) < n:
        kind = rng.random()
        if kind < 0.25:
            hw = (rng.choice(primes), rng.choice(primes))
        elif kind < 0.4:  # extreme aspect ratio
            long, short = rng.randint(max(lo, hi // 2), hi), rng.randint(lo, min(hi, lo * 2))
            hw = (long, short) if rng.random() < 0.5 else (short, long)
        else:
            hw = (rng.randint(lo, hi), rng.randint(lo, hi))
        out.append(hw)
    return out


def names_size_rule(message: str) -> bool:
    return any(c.isdigit() for c in message) and any(w in message.lower() for w in SIZE_RULE_WORDS)


def _finite(tensors: Sequence[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t.float()).all()) for t in tensors)


def _rel_err(model: torch.nn.Module, x: torch.Tensor, outs: Sequence[torch.Tensor]) -> float:
    """Largest relative (Frobenius) error of ``outs`` against the float32 outputs of ``model`` on ``x``."""
    with torch.no_grad():
        ref = model(x)
    ref = list(ref) if isinstance(ref, (list, tuple)) else [ref]
    return max(((o.float() - r).norm() / r.norm().clamp_min(1e-12)).item() for o, r in zip(outs, ref))


def fuzz_call(model: torch.nn.Module, hw: Tuple[int, int], batch: int, train: bool, dtype: Optional[torch.dtype],
              features: bool, seed: int, rel_tol: Optional[float] = None) -> Tuple[str, str]:
    """('ok' | 'valueerror' | 'fail', detail) of one forward (and backward in train mode). With ``rel_tol``, an eval
    call under autocast also fails when its outputs differ from the float32 ones by more than ``rel_tol`` (relative
    Frobenius error): a kernel can return finite garbage."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, *hw, generator=g)
    torch.manual_seed(seed)  # dropout / drop-path draws: the call does not depend on what ran before it
    model.train(train)
    model.zero_grad(set_to_none=True)
    try:
        with torch.autocast('cpu', dtype=dtype, enabled=dtype is not None), torch.set_grad_enabled(train):
            out = model(x)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        if features:
            chans = model.feature_info.channels()
            got = [tuple(o.shape) for o in outs]
            if len(outs) != len(chans) or any(o.ndim != 4 or o.shape[0] != batch or o.shape[1] != c
                                             for o, c in zip(outs, chans)):
                return 'fail', f'features_only shapes {got}, feature_info channels {chans}'
        elif outs[0].shape[0] != batch:
            return 'fail', f'output batch {outs[0].shape[0]} != {batch}'
        if not _finite(outs):
            bad = [i for i, o in enumerate(outs) if not _finite([o])]
            return 'fail', f'non-finite output {bad}'
        if rel_tol is not None and dtype is not None and not train:
            err = _rel_err(model, x, outs)
            if not err <= rel_tol:
                return 'fail', f'{dtype} output differs from float32 by {err:.3g} (relative) > {rel_tol}'
        if train:
            # a mean, as a real loss: a sum over a large map overflows fp16 gradients (beyond 65504) in any model
            sum(o.float().mean() for o in outs).backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if not grads:
                return 'fail', 'no gradient'
            if not _finite(grads):
                bad = [n for n, p in model.named_parameters() if p.grad is not None and not _finite([p.grad])]
                return 'fail', f'non-finite gradient in {bad[:3]}'
        return 'ok', ''
    except ValueError as e:
        msg = str(e).splitlines()[0] if str(e) else ''
        if names_size_rule(msg):
            return 'valueerror', msg[:160]
        return 'fail', f'ValueError without a size rule: {msg[:160]}'
    except Exception as e:  # every other exception is a finding
        return 'fail', f'{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ""}'


def iter_model(name: str, n_shapes: int, seed: int, lo: int, hi: int, dtypes: Sequence[str],
               modes: Sequence[str], skip: Sequence[int] = (), run: Optional[Sequence[int]] = None,
               rel_tol: Optional[float] = None) -> Iterator[Dict]:
    """One record per call, lazily: every shape once, rotating the batch size, mode, dtype and features_only over
    shapes. Calls in `skip` are not run; with `run`, only those calls are. `rel_tol`: see `fuzz_call` (not applied
    to the families of ``PRECISION_EXEMPT``)."""
    if name.startswith(PRECISION_EXEMPT):
        rel_tol = None
    torch.manual_seed(seed)
    models = {False: timm.create_model(name, pretrained=False, num_classes=10),
              True: timm.create_model(name, pretrained=False, features_only=True)}
    buffers = {k: {n: b.clone() for n, b in m.named_buffers()} for k, m in models.items()}
    rng = random.Random(f'{seed}-{name}')
    skip = set(skip)
    for i, hw in enumerate(sizes(n_shapes, rng.randint(0, 2 ** 31), lo, hi)):
        if i in skip or (run is not None and i not in run):
            continue
        batch = 1 + i % 3
        train = modes[i % len(modes)] == 'train'
        dt = dtypes[(i // len(modes)) % len(dtypes)]
        features = i % 4 == 3
        with torch.no_grad():  # the state the model was built with: calls do not depend on each other
            for n, b in models[features].named_buffers():
                b.copy_(buffers[features][n])
        t0 = time.perf_counter()
        status, detail = fuzz_call(models[features], hw, batch, train, DTYPES[dt], features, seed + i,
                                   rel_tol)
        yield dict(model=name, index=i, hw=list(hw), batch=batch, mode='train' if train else 'eval', dtype=dt,
                   features=features, status=status, detail=detail, seconds=time.perf_counter() - t0)


def fuzz_model(name: str, n_shapes: int, seed: int, lo: int, hi: int, dtypes: Sequence[str],
               modes: Sequence[str], rel_tol: Optional[float] = None) -> List[Dict]:
    """Every call of one model (see `iter_model`)."""
    return list(iter_model(name, n_shapes, seed, lo, hi, dtypes, modes, rel_tol=rel_tol))


def report(records: List[Dict], header: Dict) -> str:
    """Markdown: the run's settings (`header`), totals, a per-model table, the failures and the size rules met."""
    total = len(records)
    count = {s: sum(r['status'] == s for r in records) for s in ('ok', 'valueerror', 'fail')}
    precision = f'relative error <= {header["rel_tol"]}' if header.get('rel_tol') else 'off'
    lines = [f'# Size and precision fuzz ({datetime.date.today().isoformat()})', '',
             f'Command: `{header["command"]}`; torch {header["torch"]}, timm {header.get("timm")}, '
             f'{header["threads"]} thread(s), '
             f'{header["minutes"]:.1f} min of fuzz time; load at the start: {header["load"]}; MALLOC_PERTURB_='
             f'{header.get("malloc_perturb")} (set: fresh allocations are filled with a byte pattern, so a kernel '
             'that reads uninitialised memory gives non-finite values instead of passing by luck).', '',
             f'Sizes {header["min_side"]}..{header["max_side"]} per axis (primes and extreme aspect ratios included), '
             f'batch 1-3, modes {header["modes"]}, dtypes {header["dtypes"]} (CPU autocast), every 4th call '
             f'features_only; precision check of eval autocast calls against float32: '
             f'{precision}.', '']
    if header.get('note'):
        lines += [header['note'], '']
    counts = {n: sum(r['model'] == n for r in records) for n in dict.fromkeys(r['model'] for r in records)}
    short = {n: c for n, c in counts.items() if c < header['shapes']}
    if short:
        lines += [f'**{header["shapes"]} shapes per model were asked; the deadline ({header.get("deadline")} UTC) '
                  'stopped the slowest models earlier (fair share: the model with the least fuzz time so far runs '
                  'next): ' + ', '.join(f'{n} {c}' for n, c in short.items()) + ' shapes.**', '']
    lines += [f'**Totals: {total} calls, {count["ok"]} ok, {count["valueerror"]} ValueErrors naming the size rule, '
             f'{count["fail"]} failures.**', '']
    lines += ['| model | calls | ok | ValueError | failures | seconds |', '|---|---:|---:|---:|---:|---:|']
    for name in dict.fromkeys(r['model'] for r in records):
        rs = [r for r in records if r['model'] == name]
        lines.append(f'| {name} | {len(rs)} | {sum(r["status"] == "ok" for r in rs)} | '
                     f'{sum(r["status"] == "valueerror" for r in rs)} | {sum(r["status"] == "fail" for r in rs)} | '
                     f'{sum(r["seconds"] for r in rs):.1f} |')
    fails = [r for r in records if r['status'] == 'fail']
    rules = sorted({(r['model'].split('_')[0], r['detail']) for r in records if r['status'] == 'valueerror'})
    if fails:
        lines += ['', '## Failures', '']
        lines += [f'- {r["model"]} #{r["index"]} {tuple(r["hw"])} b{r["batch"]} {r["mode"]} {r["dtype"]}'
                  f'{" features_only" if r["features"] else ""}: {r["detail"]}' for r in fails]
    if rules:
        lines += ['', '## Size rules met (family: message)', '']
        lines += [f'- {fam}: {msg}' for fam, msg in rules[:100]]
    return '\n'.join(lines) + '\n'


def _load(path: str) -> Tuple[Optional[Dict], List[Dict]]:
    header, records = None, []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    if 'header' in rec:
                        header = rec['header']
                    else:
                        records.append(rec)
    return header, records


def _print_fail(r: Dict) -> None:
    print(f'  FAIL {r["model"]} #{r["index"]} {tuple(r["hw"])} b{r["batch"]} {r["mode"]} {r["dtype"]} '
          f'features={r["features"]}: {r["detail"]}', flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', default='all', help="comma list, 'all' (every registered model) or 'smallest'")
    p.add_argument('--shapes', type=int, default=200, help='shapes per model')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--min-side', type=int, default=32)
    p.add_argument('--max-side', type=int, default=1024)
    p.add_argument('--dtypes', default='fp32,bf16,fp16')
    p.add_argument('--modes', default='eval,train')
    p.add_argument('--out', default=None, help='report path (default benchmarks/fuzz_sizes_<date>.md; - for none)')
    p.add_argument('--jsonl', default=None, help='append every call to this file as it ends')
    p.add_argument('--resume', action='store_true', help='skip the calls --jsonl already holds')
    p.add_argument('--deadline', default=None, help='HH:MM UTC: no call starts after it (fair share over models)')
    p.add_argument('--only', default=None, help='comma list of call indices to run (one model)')
    p.add_argument('--rel-tol', type=float, default=None,
                   help='also fail eval autocast calls farther than this from float32 (relative; 0.1 in the tests)')
    p.add_argument('--report-from', default=None, help='write the report of this JSONL file and exit')
    p.add_argument('--note', default=None, help='with --report-from: a paragraph for the report (the run history)')
    args = p.parse_args(argv)
    out = args.out or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks',
                                   f'fuzz_sizes_{datetime.date.today().isoformat()}.md')
    if args.report_from:
        header, records = _load(args.report_from)
        if header is None:
            raise ValueError(f'{args.report_from} has no header line')
        header['minutes'] = sum(r['seconds'] for r in records) / 60
        header['note'] = args.note
        text = report(records, header)
        if out != '-':
            with open(out, 'w') as f:
                f.write(text)
            print(f'wrote {out}')
        print(text)
        return 1 if any(r['status'] == 'fail' for r in records) else 0
    if args.models == 'all':
        names = visionattn.list_models()
    elif args.models == 'smallest':
        names = list(SMALLEST.values())
    else:
        names = args.models.split(',')
    deadline = None
    if args.deadline:
        now = datetime.datetime.now(datetime.timezone.utc)
        hh, mm = (int(v) for v in args.deadline.split(':'))
        deadline = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
        if deadline < now:
            deadline += datetime.timedelta(days=1)
    header = dict(command='python tools/fuzz_sizes.py ' + ' '.join(sys.argv[1:] if argv is None else argv),
                  torch=torch.__version__, timm=timm.__version__, threads=torch.get_num_threads(), shapes=args.shapes,
                  min_side=args.min_side, max_side=args.max_side, modes=args.modes, dtypes=args.dtypes,
                  deadline=args.deadline, rel_tol=args.rel_tol, malloc_perturb=os.environ.get('MALLOC_PERTURB_'),
                  load=' '.join(f'{v:.2f}' for v in os.getloadavg()))
    done: List[Dict] = []
    if args.jsonl and args.resume:
        old_header, done = _load(args.jsonl)
        header = old_header or header
    run = None
    if args.only is not None:
        if len(names) != 1:
            raise ValueError(f'--only replays calls of one model, got {len(names)} models')
        run = [int(v) for v in args.only.split(',')]
    sink = open(args.jsonl, 'a') if args.jsonl else None
    if sink is not None and not done:
        sink.write(json.dumps(dict(header=header)) + '\n')
    records = list(done)
    spent = {n: sum(r['seconds'] for r in done if r['model'] == n) for n in names}
    gens = {n: iter_model(n, args.shapes, args.seed, args.min_side, args.max_side, args.dtypes.split(','),
                          args.modes.split(','), skip=[r['index'] for r in done if r['model'] == n], run=run,
                          rel_tol=args.rel_tol)
            for n in names}
    while gens:
        if deadline is not None and datetime.datetime.now(datetime.timezone.utc) >= deadline:
            print(f'deadline {args.deadline} reached; unfinished: {sorted(gens)}', flush=True)
            break
        name = min(gens, key=lambda n: spent[n])  # fair share: the least fuzz time so far runs next
        r = next(gens[name], None)
        if r is None:
            del gens[name]
            rs = [r for r in records if r['model'] == name]
            print(f'{name}: {len(rs)} calls, {sum(r["status"] == "valueerror" for r in rs)} ValueErrors, '
                  f'{sum(r["status"] == "fail" for r in rs)} failures, {spent[name]:.1f} s', flush=True)
            continue
        spent[name] += r['seconds']
        records.append(r)
        if sink is not None:
            sink.write(json.dumps(r) + '\n')
            sink.flush()
        if r['status'] == 'fail':
            _print_fail(r)
    if sink is not None:
        sink.close()
    header['minutes'] = sum(r['seconds'] for r in records) / 60
    text = report(records, header)
    if out != '-':
        with open(out, 'w') as f:
            f.write(text)
        print(f'wrote {out}')
    print(next(t for t in text.split('\n\n') if t.startswith('**Totals')))
    return 1 if any(r['status'] == 'fail' for r in records) else 0


if __name__ == '__main__':
    sys.exit(main())
