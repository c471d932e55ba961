#!/usr/bin/env python3
"""Export a visionattn model to ONNX (standard operators, onnxruntime) or to a torch.export ExportedProgram.

Examples:
    python tools/export.py biformer_tiny --format onnx --dynamic --check --out biformer_tiny.onnx
    python tools/export.py nat_mini --format torch-export --dynamic --features-only --check --out nat_mini.pt2
    python tools/export.py transnext_micro --format onnx --pretrained --img-size 224 224 --check

With ``--check`` the export runs (onnxruntime on CPU, or the ExportedProgram) against eager PyTorch at the export size
and at two other sizes (one non-square); the max abs diff is printed for each and the exit status is 1 when one
exceeds ``--atol`` (fp32: 1e-4). A failing export exits with status 2 and names the op that blocked it.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('model', help='registered model name (visionattn.list_models())')
    p.add_argument('--format', choices=('onnx', 'torch-export'), default='onnx')
    src = p.add_mutually_exclusive_group()
    src.add_argument('--checkpoint', default=None, help='checkpoint file to load')
    src.add_argument('--pretrained', action='store_true', help='load the pretrained weights')
    p.add_argument('--img-size', type=int, nargs=2, default=None, metavar=('H', 'W'),
                   help="example input size (default 224 224, fitted to the family's SIZE_MULTIPLE)")
    p.add_argument('--dynamic', action='store_true', help='dynamic height and width')
    p.add_argument('--features-only', action='store_true', help='export the feature maps (a tuple of NCHW maps)')
    p.add_argument('--opset', type=int, default=18)
    p.add_argument('--batch-size', type=int, default=1)
    p.add_argument('--strict', action='store_true', help='torch.export strict mode (default: non-strict)')
    p.add_argument('--check', action='store_true', help='compare with eager at 3 sizes')
    p.add_argument('--check-sizes', type=int, nargs='+', default=None, metavar='S',
                   help='sizes for --check as H W H W ... (default: the export size, +32 and +32x+96)')
    p.add_argument('--atol', type=float, default=1e-4)
    p.add_argument('--out', default=None, help='output file (default: MODEL.onnx or MODEL.pt2)')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import visionattn
    from visionattn.export import ExportError, default_check_sizes, export, fit_size
    if args.model not in visionattn.list_models():
        print(f'unknown model {args.model!r}; see visionattn.list_models()', file=sys.stderr)
        return 2
    out = args.out or f'{args.model}.' + ('onnx' if args.format == 'onnx' else 'pt2')
    img_size = tuple(args.img_size) if args.img_size else fit_size(args.model, (224, 224))
    check = False
    if args.check:
        if args.check_sizes:
            if len(args.check_sizes) % 2:
                print('--check-sizes takes pairs H W', file=sys.stderr)
                return 2
            check = list(zip(args.check_sizes[::2], args.check_sizes[1::2]))
        else:  # a static export runs at its own size only
            check = default_check_sizes(img_size) if args.dynamic else [img_size]
    try:
        result = export(
            args.model, args.format, out=out, dynamic=args.dynamic, img_size=img_size,
            batch_size=args.batch_size, features_only=args.features_only, opset=args.opset,
            pretrained=args.pretrained, checkpoint=args.checkpoint, check=check, atol=args.atol, strict=args.strict)
    except ExportError as e:
        print(f'export failed{" (blocked by " + e.op + ")" if e.op else ""}: {e}', file=sys.stderr)
        return 2
    print(f'exported {args.model} ({args.format}, {"dynamic" if args.dynamic else "static"} H/W) to {out}')
    if not check:
        return 0
    _, report = result
    ok = True
    for r in report:
        status = 'ok' if r.ok else 'FAIL'
        extra = f' ({r.error})' if r.error else ''
        print(f'  {r.size[0]}x{r.size[1]}: max abs diff {r.max_abs_diff:.3e} [{status}]{extra}')
        ok &= r.ok
    if not ok:
        print(f'check failed: max abs diff above {args.atol}', file=sys.stderr)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
