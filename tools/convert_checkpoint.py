"""Convert an official checkpoint (or a whole mm detector/segmentor checkpoint) into visionattn safetensors.

    python tools/convert_checkpoint.py nat_tiny.pth nat_tiny.safetensors --model nat_tiny --verify
    python tools/convert_checkpoint.py evit.pth evit.safetensors --model evit_deit_small_patch16_224 \\
        --model-kwargs keep_rate=0.7 fuse_token=True
    python tools/convert_checkpoint.py upernet_dinat_tiny.pth dinat_tiny_ade.safetensors --model dinat_tiny \\
        --model-kwargs dilations=ade20k

The source is read without running pickled code (``visionattn.models._hub.safe_load``), converted by the family's
``checkpoint_filter_fn`` and loaded into the model (missing and unexpected keys are reported; a checkpoint that
misses anything the model needs is an error; from an mm checkpoint, the classifier and final norm the backbone
drops may be missing). The safetensors file carries metadata: the model name, the
source file, the license, and the runtime settings the weights need (``--model-kwargs``, e.g. EViT's keep rate).
``--verify`` runs the converted model on a fixed input and prints the output statistics.
"""
import argparse
import ast
import hashlib
import json
import os
import sys

import timm
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import visionattn  # noqa: E402
from visionattn.models._convert import unwrap_state_dict  # noqa: E402
from visionattn.models._hub import safe_load  # noqa: E402


def _parse_kwargs(items) -> dict:
    out = {}
    for item in items or []:
        if '=' not in item:
            raise ValueError(f'--model-kwargs takes key=value pairs, got {item!r}')
        key, value = item.split('=', 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value  # a plain string such as dilations=ade20k
    return out


def _backbone_weights(state_dict: dict) -> tuple:
    """The model's weights out of an mm detector/segmentor checkpoint (``backbone.`` and our ``model.`` prefix)."""
    state_dict = unwrap_state_dict(state_dict)
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
        if state_dict and all(k.startswith('model.') for k in state_dict):
            state_dict = {k[len('model.'):]: v for k, v in state_dict.items()}
        return state_dict, True
    return state_dict, False


def convert(src: str, dst: str, model_name: str, model_kwargs: dict = None) -> torch.nn.Module:
    """Convert ``src`` for ``model_name`` and write ``dst`` (safetensors with metadata); returns the loaded model."""
    from safetensors.torch import save_file

    if model_name not in visionattn.list_models():
        raise ValueError(f'unknown visionattn model {model_name!r}; see visionattn.list_models()')
    model_kwargs = model_kwargs or {}
    model = timm.create_model(model_name, **model_kwargs)
    state_dict, from_mm = _backbone_weights(safe_load(src))
    filter_fn = getattr(sys.modules[type(model).__module__], 'checkpoint_filter_fn', None)
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if from_mm:
        # a dense-prediction checkpoint holds what the mm backbone keeps: the model without its head and final norm
        backbone = timm.create_model(model_name, **model_kwargs)
        backbone.prune_intermediate_layers(list(range(len(backbone.feature_info))), prune_norm=True, prune_head=True)
        required = set(backbone.state_dict())
        bad_missing = [k for k in missing if k in required]
    else:
        bad_missing = list(missing)
    print(f'loaded {len(state_dict) - len(unexpected)} tensors; missing: {missing or "none"}; '
          f'unexpected: {unexpected or "none"}')
    if bad_missing or (unexpected and not from_mm):
        raise ValueError(f'{src} does not match {model_name}: missing {bad_missing}, unexpected {unexpected}')
    with open(src, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    metadata = {
        'format': 'pt',
        'model': model_name,
        'model_kwargs': json.dumps(model_kwargs, sort_keys=True),
        'source': os.path.basename(src),
        'source_sha256': digest,
        'license': str(model.pretrained_cfg.get('license') or 'unknown'),
        'converted_by': f'visionattn {visionattn.__version__}',
    }
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, dst, metadata=metadata)
    print(f'wrote {dst} ({metadata["model"]}, kwargs {metadata["model_kwargs"]}, license {metadata["license"]})')
    return model


def verify(model: torch.nn.Module, seed: int = 0) -> dict:
    """Output statistics of the model on a fixed input (seeded normal noise at the model's input size)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, *model.pretrained_cfg['input_size'], generator=g)
    with torch.no_grad():
        out = model.eval()(x)
    stats = dict(shape=list(out.shape), mean=out.mean().item(), std=out.std().item(), min=out.min().item(),
                 max=out.max().item(), top5=out[0].topk(min(5, out.shape[-1])).indices.tolist())
    print('verify: ' + ', '.join(f'{k}={v:.6g}' if isinstance(v, float) else f'{k}={v}' for k, v in stats.items()))
    return stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='official checkpoint, visionattn file, or mm detector/segmentor checkpoint')
    parser.add_argument('dst', help='output .safetensors')
    parser.add_argument('--model', required=True, help='registered visionattn model name')
    parser.add_argument('--model-kwargs', nargs='*', metavar='KEY=VALUE',
                        help='constructor arguments the weights need (stored in the metadata)')
    parser.add_argument('--verify', action='store_true', help='print output statistics on a fixed input')
    args = parser.parse_args(argv)
    if not args.dst.endswith('.safetensors'):
        parser.error('dst must end with .safetensors')
    model = convert(args.src, args.dst, args.model, _parse_kwargs(args.model_kwargs))
    if args.verify:
        verify(model)


if __name__ == '__main__':
    main()
