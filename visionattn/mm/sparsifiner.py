"""Sparsifiner's two-phase training in mmpretrain: a classifier with the dense teacher and the official losses.

``SparsifinerClassifier`` is mmpretrain's ``TimmClassifier`` (``model_name`` a ``sparsifiner_*`` model) plus a frozen
dense teacher with the student's initial weights (the official teacher is DeiT loaded from the same checkpoint as the
student) and ``visionattn.models.sparsifiner.SparsifinerLoss``. Its ``phase`` selects the loss:

* ``'recon'``: the attention reconstruction of the connectivity predictors against the teacher's attention
  (``loss_attn_recon``); the student runs in reconstruction mode (dense attention, ``set_attn_recon(True)``);
* ``'distill'``: the classification loss of the config (``loss_cls``) + ``loss_cls_distill`` (KL to the teacher's
  logits) + ``loss_token_distill`` (MSE to the teacher's final patch tokens), with the sparse attention.

``visionattn.mm.hooks.SparsifinerPhaseHook`` sets the phase, freezes and unfreezes the parameters of each phase and
copies the student's weights into the teacher when training starts. The teacher is a submodule, so checkpoints hold it
(under ``teacher.``) and a resumed run keeps the original teacher.
"""
import copy
import re
from typing import Dict, List, Optional

import torch
from mmpretrain.models import TimmClassifier
from mmpretrain.registry import MODELS

from visionattn.models.sparsifiner import Sparsifiner, SparsifinerLoss

__all__ = ['SparsifinerClassifier']


@MODELS.register_module(force=True)
class SparsifinerClassifier(TimmClassifier):
    """``TimmClassifier`` for the two-phase Sparsifiner recipe (see the module docstring).

    Args:
        *args: ``timm.create_model`` positional arguments (the model name).
        recon_weight: Weight of the attention-reconstruction loss (official ``LOSS.ATTN_RECON.WEIGHT`` 0.01).
        cls_distill_weight: Weight of the logit KL distillation (official ``LOSS.CLS_DISTILL.WEIGHT`` 0.5).
        token_distill_weight: Weight of the token MSE distillation (official ``LOSS.TOKEN_DISTILL.WEIGHT`` 0.5).
        phase: The starting phase, ``'recon'`` or ``'distill'`` (the hook sets it from the schedule).
        **kwargs: ``TimmClassifier`` and ``timm.create_model`` keyword arguments.
    """

    def __init__(
            self,
            *args,
            recon_weight: float = 0.01,
            cls_distill_weight: float = 0.5,
            token_distill_weight: float = 0.5,
            phase: str = 'recon',
            **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if not isinstance(self.model, Sparsifiner):
            raise TypeError(f'SparsifinerClassifier needs a Sparsifiner model, got {type(self.model).__name__}')
        self.distill_loss = SparsifinerLoss(recon_weight, cls_distill_weight, token_distill_weight)
        self.teacher = copy.deepcopy(self.model)  # weights synchronised by SparsifinerPhaseHook at the start
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.phase = phase
        # TimmClassifier's load hook prefixes every key with 'model.': put the teacher's back
        self._register_load_state_dict_pre_hook(self._teacher_keys)

    @staticmethod
    def _teacher_keys(state_dict, prefix, *args) -> None:
        for k in [k for k in state_dict if k.startswith(f'{prefix}model.teacher.')]:
            state_dict[re.sub(f'^{prefix}model.teacher.', f'{prefix}teacher.', k)] = state_dict.pop(k)

    def train(self, mode: bool = True) -> 'SparsifinerClassifier':
        super().train(mode)
        self.teacher.eval()  # the teacher is always in eval mode (no stochastic depth / dropout)
        return self

    @torch.no_grad()
    def sync_teacher(self) -> None:
        """Copy the student's current weights into the teacher (at the start of training: the official teacher is
        DeiT with the weights the student starts from)."""
        self.teacher.load_state_dict(self.model.state_dict())

    def loss(self, inputs: torch.Tensor, data_samples: List, **kwargs) -> Dict[str, torch.Tensor]:
        """The losses of the current phase; the other phase's terms are reported as zeros (the official code computes
        them with weight 0), so every logged term is the current one."""
        if self.phase == 'recon':
            student = self.model.forward_sparsifiner(inputs)
            with torch.no_grad():
                teacher = self.teacher.forward_dense(inputs, need_attn=True)
            losses = self.distill_loss(student, teacher, 'recon')
            zero = losses['loss_attn_recon'].new_zeros(())
            return dict(losses, loss_cls=zero, loss_cls_distill=zero, loss_token_distill=zero)
        if self.phase != 'distill':
            raise ValueError(f"phase must be 'recon' or 'distill', got {self.phase!r}")
        student = self.model.forward_distill(inputs)
        with torch.no_grad():
            teacher = self.teacher.forward_dense(inputs)
        losses = dict(loss_cls=self._get_loss(student['logits'], data_samples, **kwargs)['loss'])
        losses.update(self.distill_loss(student, teacher, 'distill'))
        losses['loss_attn_recon'] = losses['loss_cls'].new_zeros(())
        return losses


def unwrap_classifier(model: torch.nn.Module) -> Optional[SparsifinerClassifier]:
    """The ``SparsifinerClassifier`` inside a (possibly DDP-wrapped) runner model, or None."""
    from mmengine.model import is_model_wrapper

    model = model.module if is_model_wrapper(model) else model
    return model if isinstance(model, SparsifinerClassifier) else None
