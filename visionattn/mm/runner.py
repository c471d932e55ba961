"""What tools/train.py and tools/test.py share: config loading, CPU fallbacks and runner construction.

One entry point serves mmpretrain, mmdet and mmseg configs: the config's ``default_scope`` selects the toolbox, and
``Runner`` (or the config's ``runner_type``) does the rest, as in the toolboxes' own tools.
"""
import logging
import os
import os.path as osp
from typing import Optional

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.runner import Runner

SCOPES = ('mmseg', 'mmdet', 'mmpretrain')


def _replace_types(node, old: str, new: str) -> int:
    """Replace ``type=old`` by ``type=new`` in every dict of a config tree; returns the count."""
    count = 0
    if isinstance(node, dict):
        if node.get('type') == old:
            node['type'] = new
            count += 1
        for value in node.values():
            count += _replace_types(value, old, new)
    elif isinstance(node, (list, tuple)):
        for value in node:
            count += _replace_types(value, old, new)
    return count


def load_config(
        path: str,
        options: Optional[dict] = None,
        work_dir: Optional[str] = None,
        launcher: str = 'none',
) -> Config:
    """Read a config, merge command-line options, set the work dir and launcher, and adapt it to a CPU machine.

    Without CUDA, ``SyncBN`` becomes ``BN`` (also in CPU-distributed runs, where mmengine would keep it) and the
    distributed backend becomes ``gloo``, so the same configs train on a laptop, a CPU cluster and GPUs.
    """
    cfg = Config.fromfile(path)
    if options:
        cfg.merge_from_dict(options)
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise ValueError(f'{path}: default_scope must be one of {SCOPES} (from its _base_ runtime), got {scope!r}')
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(path))[0])
    if not torch.cuda.is_available():
        amp_to_fp32(cfg)
        _replace_types(cfg._cfg_dict, 'SyncBN', 'BN')
        cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
        if launcher != 'none':
            # DDP over CPU modules takes no device ids
            cfg.model_wrapper_cfg = dict(
                dict(type='MMDistributedDataParallel'), **cfg.get('model_wrapper_cfg', {}), device_ids=None)
    return cfg


def amp_to_fp32(cfg: Config) -> None:
    """Without CUDA, turn an ``AmpOptimWrapper`` into a plain ``OptimWrapper`` (fp32) and log a note."""
    # mmengine's AmpOptimWrapper refuses to build without an accelerator (and fp16 autocast on CPU is slow and
    # unsupported by several ops): the configs that follow an official fp16 run train in fp32 there, with a note
    wrapper = cfg.get('optim_wrapper')
    if isinstance(wrapper, dict) and wrapper.get('type') == 'AmpOptimWrapper':
        for key in ('loss_scale', 'dtype', 'use_fsdp'):
            wrapper.pop(key, None)
        wrapper['type'] = 'OptimWrapper'
        print_log('no CUDA device: AmpOptimWrapper (mixed precision) replaced by OptimWrapper, training in fp32',
                  logger='current', level=logging.WARNING)


def _init_cpu_distributed(cfg: Config) -> None:
    # mmengine's init_dist calls torch.cuda.set_device; on a CPU machine initialise the process group here (torchrun
    # sets the env) and mmengine uses it as it is
    if cfg.launcher == 'pytorch' and not torch.cuda.is_available() and not dist.is_initialized():
        dist.init_process_group(backend='gloo', init_method='env://')


def build_runner(cfg: Config) -> Runner:
    """The toolbox's runner for a config from ``load_config``, with ``RNGStateHook`` (bitwise resume) registered."""
    from . import allow_mmengine_checkpoints
    from .hooks import RNGStateHook

    allow_mmengine_checkpoints()
    _init_cpu_distributed(cfg)
    os.makedirs(cfg.work_dir, exist_ok=True)
    if 'runner_type' in cfg:
        from mmengine.registry import RUNNERS
        runner = RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    if not any(isinstance(h, RNGStateHook) for h in runner.hooks):
        runner.register_hook(RNGStateHook())
    return runner
