"""``safe_load`` proves that nothing ran: pickles that would create a file (in tmp_path) through ``open``, ``os``,
``subprocess``, ``eval``/``exec`` or ``getattr`` are refused, the file does not exist afterwards, and the error names
the global; truncated or damaged files are reported as corrupt or incomplete, never as unsafe."""
import importlib
import io
import os
import subprocess

import pytest
import torch

from visionattn.models._hub import safe_load


class _Call:
    """Pickles as ``fn(*args)``: what a malicious checkpoint runs when unpickled by a plain ``torch.load``."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args

    def __call__(self, *args):  # pickle only accepts callables as the first element of a reduce tuple
        raise AssertionError('never called while pickling')


def _payloads(target: str):
    """(name of the global the error must name, object whose unpickling creates `target`)."""
    os_system = _Call(getattr, _Call(importlib.import_module, 'os'), 'system')  # getattr(import_module('os'), ...)
    return [
        ('io.open', _Call(open, target, 'w')),
        ('os.makedirs', _Call(os.makedirs, target)),
        ('posix.system', _Call(os.system, f'touch {target}')),
        ('subprocess.run', _Call(subprocess.run, ['touch', target])),
        ('builtins.eval', _Call(eval, f'open({target!r}, "w")')),
        ('builtins.exec', _Call(exec, f'open({target!r}, "w").close()')),
        ('builtins.getattr', _Call(os_system, f'touch {target}')),
    ]


def _save(obj, path, legacy: bool):
    torch.save({'model': {'w': torch.ones(2)}, 'payload': obj}, path, _use_new_zipfile_serialization=not legacy)


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
@pytest.mark.parametrize('case', range(7), ids=[n for n, _ in _payloads('x')])
def test_payload_is_refused_and_nothing_ran(tmp_path, case, legacy):
    target = str(tmp_path / 'pwned')
    name, obj = _payloads(target)[case]
    path = tmp_path / 'evil.pth'
    _save(obj, path, legacy)
    assert not os.path.exists(target), 'saving must not run the payload'
    with pytest.raises(RuntimeError, match='refused to load') as err:
        safe_load(str(path))
    # the getattr payload also needs importlib.import_module: once visionattn.mm has allow-listed mmengine's restricted
    # getattr (any test that imported it earlier in the process), that one is the global refused first
    names = (name, 'importlib.import_module') if name == 'builtins.getattr' else (name,)
    assert any(n in str(err.value) for n in names), str(err.value)
    assert 'corrupt' not in str(err.value)
    assert not os.path.exists(target), f'{name} ran while loading'


def test_payloads_are_live(tmp_path):
    """The payloads are real: a plain unpickling (weights_only=False, as a careless loader does) creates the file."""
    for i, (name, obj) in enumerate(_payloads(str(tmp_path / 'pwned'))):
        target = str(tmp_path / f'pwned{i}')
        obj = _payloads(target)[i][1]
        path = tmp_path / f'evil{i}.pth'
        _save(obj, path, legacy=False)
        torch.load(path, weights_only=False)
        assert os.path.exists(target), f'{name} payload did not run'


def _good(tmp_path, legacy=False) -> bytes:
    buf = io.BytesIO()
    torch.save({'w': torch.randn(64, 64), 'b': torch.randn(64)}, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


@pytest.mark.parametrize('kind', ['truncated_zip', 'truncated_legacy', 'garbage', 'empty', 'flipped_header',
                                  'truncated_safetensors'])
def test_corrupt_files_are_corrupt_not_unsafe(tmp_path, kind):
    if kind == 'truncated_safetensors':
        from safetensors.torch import save
        data = save({'w': torch.randn(64, 64)})
        path = tmp_path / 'x.safetensors'
        path.write_bytes(data[:len(data) // 2])
    else:
        data = {'truncated_zip': _good(tmp_path)[:3000], 'truncated_legacy': _good(tmp_path, legacy=True)[:200],
                'garbage': b'\x80\x02' + bytes(range(256)) * 4, 'empty': b'',
                'flipped_header': b'\x00' * 8 + _good(tmp_path)[8:]}[kind]
        path = tmp_path / 'x.pth'
        path.write_bytes(data)
    with pytest.raises(RuntimeError, match='corrupt or incomplete') as err:
        safe_load(str(path))
    assert 'refused' not in str(err.value) and 'unsafe' not in str(err.value)


def test_good_files_still_load(tmp_path):
    for legacy in (False, True):
        path = tmp_path / f'ok{legacy}.pth'
        path.write_bytes(_good(tmp_path, legacy))
        assert set(safe_load(str(path))) == {'w', 'b'}
