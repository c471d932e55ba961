"""Pretrained weights end to end against a local HTTP server (127.0.0.1): official file formats, the cache, corrupt
files, hash mismatches, and safe loading (a malicious pickle is refused)."""
import argparse
import functools
import hashlib
import http.server
import io
import os
import threading

import pytest
import timm
import torch
from safetensors.torch import save_file

import visionattn
from visionattn.models._hub import download_pretrained, safe_load


@pytest.fixture()
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path/www``; yields (base url, folder, request log)."""
    root = tmp_path / 'www'
    root.mkdir()
    log = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, fmt, *args):
            log.append(self.path)

    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}', root, log
    httpd.shutdown()


class _Evil:
    def __reduce__(self):
        return (os.system, ('echo visionattn-pwned > /dev/null',))


def _official_training_dict(state_dict):
    # what DeiT/EViT/Swin-style training scripts save: weights plus args, optimizer state, epoch
    return {'model': state_dict, 'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-3}]}, 'epoch': 299,
            'args': argparse.Namespace(model='x', lr=5e-4), 'max_accuracy': 81.5}


@pytest.mark.parametrize('fmt', ['training_dict', 'raw', 'safetensors', 'yacs_config'])
def test_pretrained_download_formats_and_head_adaptation(server, tmp_path, fmt):
    base, root, log = server
    torch.manual_seed(0)
    src = timm.create_model('nat_mini').eval()
    sd = src.state_dict()
    name = {'safetensors': 'w.safetensors'}.get(fmt, 'w.pth')
    if fmt == 'training_dict':
        torch.save(_official_training_dict(sd), root / name)
    elif fmt == 'raw':
        torch.save(sd, root / name)
    elif fmt == 'safetensors':
        save_file({k: v.contiguous() for k, v in sd.items()}, str(root / name))
    else:
        # a pickled yacs CfgNode (Swin/Agent/LITv2 'config'), written under its real class path
        import pickle
        import sys
        import types
        mod = types.ModuleType('yacs.config')

        class CfgNode(dict):
            pass
        CfgNode.__module__, CfgNode.__qualname__ = 'yacs.config', 'CfgNode'
        mod.CfgNode = CfgNode
        sys.modules.setdefault('yacs', types.ModuleType('yacs'))
        sys.modules['yacs.config'] = mod
        try:
            cfg = CfgNode(MODEL=CfgNode(TYPE='nat'))
            buf = io.BytesIO()
            torch.save({'model': sd, 'config': cfg}, buf, pickle_module=pickle)
        finally:
            del sys.modules['yacs.config']
        (root / name).write_bytes(buf.getvalue())
    cache = tmp_path / 'cache'
    x = torch.randn(1, 3, 64, 64)
    model = timm.create_model('nat_mini', pretrained=True, pretrained_cfg_overlay=dict(url=f'{base}/{name}'),
                              cache_dir=str(cache)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x))
    # cached: a second model does not download again
    n = len(log)
    timm.create_model('nat_mini', pretrained=True, pretrained_cfg_overlay=dict(url=f'{base}/{name}'),
                      cache_dir=str(cache))
    assert len(log) == n
    # head and input adaptation like timm: 10 classes (head re-initialised), one input channel (summed conv)
    m = timm.create_model('nat_mini', pretrained=True, num_classes=10, in_chans=1,
                          pretrained_cfg_overlay=dict(url=f'{base}/{name}'), cache_dir=str(cache)).eval()
    assert m.get_classifier().out_features == 10
    torch.testing.assert_close(m.stages[0].blocks[0].attn.qkv.weight, src.stages[0].blocks[0].attn.qkv.weight)
    with torch.no_grad():
        m(torch.randn(1, 1, 64, 64))


def test_corrupt_download_is_not_cached(server, tmp_path):
    base, root, log = server
    buf = io.BytesIO()
    torch.save(timm.create_model('nat_mini').state_dict(), buf)
    (root / 'w.pth').write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # truncated
    cache = tmp_path / 'cache'
    with pytest.raises(RuntimeError, match='could not be read.*removed'):
        download_pretrained(f'{base}/w.pth', cache_dir=str(cache))
    assert not (cache / 'w.pth').exists()
    (root / 'w.pth').write_bytes(buf.getvalue())  # the server is fixed: the retry downloads again and works
    n = len(log)
    assert 'stages.0.blocks.0.attn.qkv.weight' in download_pretrained(f'{base}/w.pth', cache_dir=str(cache))
    assert len(log) == n + 1


def test_hash_mismatch(server, tmp_path):
    base, root, _ = server
    buf = io.BytesIO()
    torch.save({'a': torch.ones(2)}, buf)
    digest = hashlib.sha256(buf.getvalue()).hexdigest()
    (root / f'w-{digest[:8]}.pth').write_bytes(buf.getvalue())
    (root / 'w-deadbeef.pth').write_bytes(buf.getvalue())
    cache = tmp_path / 'cache'
    assert torch.equal(download_pretrained(f'{base}/w-{digest[:8]}.pth', cache_dir=str(cache))['a'], torch.ones(2))
    with pytest.raises(RuntimeError, match='hash'):
        download_pretrained(f'{base}/w-deadbeef.pth', cache_dir=str(cache))
    assert not (cache / 'w-deadbeef.pth').exists()


def test_malicious_pickle_is_refused(tmp_path, server):
    path = tmp_path / 'evil.pth'
    torch.save({'model': {'w': torch.ones(1)}, 'payload': _Evil()}, path)
    with pytest.raises(RuntimeError, match='refused to load.*posix.system|refused to load.*system'):
        safe_load(str(path))
    base, root, _ = server
    (root / 'evil.pth').write_bytes(path.read_bytes())
    with pytest.raises(RuntimeError, match='refused'):
        timm.create_model('nat_mini', pretrained=True, pretrained_cfg_overlay=dict(url=f'{base}/evil.pth'),
                          cache_dir=str(tmp_path / 'cache'))


def test_every_family_builds_through_the_safe_loader():
    # every family's _create goes through visionattn.models._hub.build_model (a new family cannot bypass it)
    import inspect
    for module in visionattn.models.model_modules():
        src = inspect.getsource(getattr(visionattn.models, module))
        assert 'build_model_with_cfg(' not in src and 'build_model(' in src, \
            f'visionattn.models.{module} must build through visionattn.models._hub.build_model'
