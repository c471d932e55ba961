"""tools/train.py, tools/test.py and tools/dist_train.sh as users run them: a few iterations of the demo segmentor,
evaluation of the checkpoint (plain and with --tta), two-process DDP on the CPU (gloo) with identical weights on both
ranks, SIGKILL and --resume with the same iteration count and learning rate, and safe loading of mmengine's
checkpoints."""
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest
import torch

from . import require

pytestmark = pytest.mark.mm
require('mmseg')
require('visionattn.mm')

from .configs import DEMO_ROOT, ROOT  # noqa: E402

CONFIG = osp.join(ROOT, 'configs', 'demo', 'upernet_nat_demo_shapes.py')
TOOLS = osp.join(ROOT, 'tools')


def _options(iters: int, ckpt_interval: int) -> list:
    return [
        f'train_dataloader.dataset.data_root={DEMO_ROOT}', f'val_dataloader.dataset.data_root={DEMO_ROOT}',
        f'test_dataloader.dataset.data_root={DEMO_ROOT}', 'val_dataloader.dataset.indices=2',
        'test_dataloader.dataset.indices=2', 'train_dataloader.batch_size=2',
        f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
        f'default_hooks.checkpoint.interval={ckpt_interval}', 'default_hooks.logger.interval=1',
        'param_scheduler.0.end=1', 'param_scheduler.1.begin=1', f'param_scheduler.1.end={iters}',
    ]


def _run(args, env_extra=None, **kwargs):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    env.update(env_extra or {})
    return subprocess.run(args, env=env, capture_output=True, text=True, **kwargs)


def _scalars(work_dir):
    """(iter, lr) of every logged training iteration, from the runs' scalars.json files, in order."""
    out = []
    for run in sorted(os.listdir(work_dir)):
        path = osp.join(work_dir, run, 'vis_data', 'scalars.json')
        if osp.exists(path):
            for line in open(path):
                rec = json.loads(line)
                if 'lr' in rec:
                    out.append((rec['iter'], rec['lr']))
    return out


def test_train_then_test(tmp_path):
    work = str(tmp_path / 'work')
    r = _run([sys.executable, osp.join(TOOLS, 'train.py'), CONFIG, '--work-dir', work,
              '--cfg-options', *_options(2, 2)], timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ckpt = osp.join(work, 'iter_2.pth')
    assert osp.exists(ckpt)
    out = str(tmp_path / 'preds.pkl')
    r = _run([sys.executable, osp.join(TOOLS, 'test.py'), CONFIG, ckpt, '--work-dir', work, '--out', out,
              '--show-dir', 'vis', '--cfg-options', *_options(2, 2), 'default_hooks.visualization.interval=1'],
             timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'mIoU' in r.stdout + r.stderr
    assert osp.exists(out)
    drawn = [f for _, _, fs in os.walk(osp.join(work, 'vis')) for f in fs if f.endswith('.png')]
    assert drawn, '--show-dir drew nothing under the work dir'
    assert not osp.exists(osp.join(ROOT, 'vis')), '--show-dir wrote into the current directory'
    # --tta: the config's tta_pipeline (2 scales x flip) through mmseg's SegTTAModel
    r = _run([sys.executable, osp.join(TOOLS, 'test.py'), CONFIG, ckpt, '--work-dir', work, '--tta',
              '--cfg-options', *_options(2, 2)], timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'mIoU' in r.stdout + r.stderr and "type='SegTTAModel'" in r.stdout + r.stderr


class _Call:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args

    def __call__(self, *args):
        raise AssertionError('never called while pickling')


def test_mmengine_checkpoints_load_safely(tmp_path):
    """A checkpoint written by mmengine's save_checkpoint (weights, AdamW state, the message hub whose HistoryBuffer
    pickles as builtins.getattr(HistoryBuffer, 'mean'...)) loads with weights_only=True through the restricted getattr;
    a crafted one asking getattr for another attribute is refused and its payload does not run."""
    import zipfile

    import numpy as np
    from mmengine.logging import HistoryBuffer, MessageHub
    from mmengine.runner.checkpoint import save_checkpoint

    from visionattn.mm import allow_mmengine_checkpoints
    allow_mmengine_checkpoints()
    hub = MessageHub.get_instance('visionattn_safe_load_test')
    for i in range(3):
        hub.update_scalar('train/loss', 1.0 / (i + 1))
        hub.update_info('iter', i)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = str(tmp_path / 'iter_3.pth')
    save_checkpoint({'meta': {'iter': 3}, 'state_dict': model.state_dict(), 'optimizer': opt.state_dict(),
                     'message_hub': hub.state_dict()}, path)
    with zipfile.ZipFile(path) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith('data.pkl')))
    assert b'getattr' in pkl, 'the restricted getattr is not exercised by this checkpoint'
    loaded = torch.load(path, weights_only=True)
    buf = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buf, HistoryBuffer) and buf.mean() == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    torch.testing.assert_close(loaded['state_dict']['weight'], model.weight.detach(), rtol=0, atol=0)
    assert torch.equal(loaded['optimizer']['state'][0]['exp_avg_sq'], opt.state[model.weight]['exp_avg_sq'])

    target = tmp_path / 'pwned'
    crafted = [  # getattr on allowed types, for attributes other than HistoryBuffer's statistics
        ('tofile', _Call(_Call(getattr, np.ndarray, 'tofile'), np.arange(3), str(target))),
        ('update', _Call(_Call(getattr, HistoryBuffer, 'update'), HistoryBuffer(), 1.0)),
    ]
    for attr, obj in crafted:
        evil = tmp_path / f'evil_{attr}.pth'
        torch.save({'state_dict': {}, 'message_hub': obj}, evil)
        with pytest.raises(Exception, match=f"getattr.*'{attr}'.* is not allowed"):
            torch.load(evil, weights_only=True)
        assert not target.exists()
    torch.save({'x': crafted[0][1]}, evil)  # the tofile payload is live: a plain load writes the file
    torch.load(evil, weights_only=False)
    assert target.exists()


def test_sigkill_then_resume_continues(tmp_path):
    work = str(tmp_path / 'work')
    args = [sys.executable, osp.join(TOOLS, 'train.py'), CONFIG, '--work-dir', work, '--cfg-options',
            *_options(8, 3)]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    # mmengine writes `last_checkpoint` once iter_3.pth is complete: kill at once (an iteration of the demo model takes
    # tens of milliseconds, so a fixed grace period could let the run reach its end before the kill)
    while not osp.exists(osp.join(work, 'last_checkpoint')) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert osp.exists(osp.join(work, 'iter_3.pth')) and not osp.exists(osp.join(work, 'iter_8.pth'))
    last = open(osp.join(work, 'last_checkpoint')).read().strip()
    r = _run([*args[:3], '--work-dir', work, '--resume', '--cfg-options', *_options(8, 3)], timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert osp.exists(osp.join(work, 'iter_8.pth'))
    resumed_from = int(osp.basename(last).split('_')[1].split('.')[0])
    logged = _scalars(work)
    # the resumed run starts at the iteration after the checkpoint and ends at 8
    second = [it for it, _ in logged][-(8 - resumed_from):]
    assert second == list(range(resumed_from + 1, 9))
    # and its learning rates are those of an uninterrupted run
    ref = str(tmp_path / 'ref')
    r = _run([*args[:3], '--work-dir', ref, '--cfg-options', *_options(8, 3)], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ref_lr = dict(_scalars(ref))
    for it, lr in logged[-(8 - resumed_from):]:
        assert lr == pytest.approx(ref_lr[it], rel=1e-6)
    # and its state is that of the uninterrupted run: weights, AdamW moments and step counts, the schedulers and the
    # RNG states, at the first checkpoint after the resume (iter 6) and at the end (bitwise on the CPU, one thread)
    for it in (6, 8):
        got = torch.load(osp.join(work, f'iter_{it}.pth'), weights_only=True)
        want = torch.load(osp.join(ref, f'iter_{it}.pth'), weights_only=True)
        assert got['meta']['iter'] == want['meta']['iter'] == it
        _assert_equal(got['param_schedulers'], want['param_schedulers'], f'iter {it} schedulers')
        _assert_equal(got['state_dict'], want['state_dict'], f'iter {it} weights')
        _assert_equal(got['optimizer'], want['optimizer'], f'iter {it} optimizer')
        # RNGStateHook: the generators' states (python, numpy, torch) are saved, and equal after the resume
        _assert_equal(got['meta']['rng_state'], want['meta']['rng_state'], f'iter {it} RNG state')


def _assert_equal(a, b, where: str):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f'{where}: max abs diff {(a.double() - b.double()).abs().max().item()}'
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f'{where}: keys {set(a) ^ set(b)}'
        for k in a:
            _assert_equal(a[k], b[k], f'{where}.{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f'{where}[{i}]')
    else:
        assert a == b, f'{where}: {a!r} != {b!r}'


def test_dist_train_two_cpu_processes(tmp_path):
    work = str(tmp_path / 'work')
    hook_dir = osp.dirname(__file__)
    config = tmp_path / 'dist_demo.py'
    config.write_text(f"_base_ = ['{CONFIG}']\n"
                      "custom_imports = dict(imports=['visionattn.mm', '_rank_dump_hook'])\n"
                      "custom_hooks = [dict(type='RankDumpHook')]\n")
    r = _run(['bash', osp.join(TOOLS, 'dist_train.sh'), str(config), '2', '--work-dir', work, '--cfg-options',
              *_options(3, 3)],
             env_extra=dict(PYTHONPATH=f'{ROOT}:{hook_dir}', PORT='29533'), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    w0 = torch.load(osp.join(work, 'rank0_weights.pth'), weights_only=True)
    w1 = torch.load(osp.join(work, 'rank1_weights.pth'), weights_only=True)
    init = torch.load(osp.join(work, 'rank0_init.pth'), weights_only=True)
    assert w0.keys() == w1.keys()
    for k in w0:
        torch.testing.assert_close(w0[k], w1[k], rtol=0, atol=0, msg=f'ranks differ at {k}')
    assert any(not torch.equal(w0[k], init[k]) for k in w0 if w0[k].is_floating_point()), 'no training happened'
