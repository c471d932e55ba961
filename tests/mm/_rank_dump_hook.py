"""A hook for the distributed test: every rank saves its model parameters before and after training."""
import os.path as osp

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class RankDumpHook(Hook):

    def _save(self, runner, tag: str) -> None:
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        # parameters only: BN statistics are per rank between forwards (DDP broadcasts buffers at each forward)
        state = {k: v.detach().cpu().clone() for k, v in model.named_parameters()}
        torch.save(state, osp.join(runner.work_dir, f'rank{get_rank()}_{tag}.pth'))

    def before_train(self, runner) -> None:
        self._save(runner, 'init')

    def after_train(self, runner) -> None:
        self._save(runner, 'weights')
