"""The harness itself: a sound tiny model passes the checks, deliberately broken ones fail them."""
import functools

import pytest
import torch
import torch.nn as nn

from visionattn.layers import check_image_input

from . import contract


class TinyNet(nn.Module):
    """A minimal sound classifier: conv stem, pooled linear head, any input size."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.pretrained_cfg = dict(input_size=(3, 32, 32))
        self.grad_checkpointing = False
        self.stem = nn.Conv2d(in_chans, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, num_classes)

    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    def forward_intermediates(self, x, intermediates_only=False, **kwargs):
        y = self.stem(check_image_input(x, self.in_chans))
        return [y] if intermediates_only else (y, [y])

    def forward(self, x):
        return self.head(self.stem(check_image_input(x, self.in_chans)).mean((2, 3)))


class UnusedParam(TinyNet):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.unused = nn.Parameter(torch.zeros(3))


class CheckpointChangesOutput(TinyNet):
    def forward(self, x):
        return super().forward(x) + (1.0 if self.grad_checkpointing else 0.0)


class CrashesOnOddSizes(TinyNet):
    def forward(self, x):
        if x.shape[-1] % 2:
            raise RuntimeError('shape mismatch deep inside')
        return super().forward(x)


class NoChannelCheck(TinyNet):
    def forward(self, x):
        return self.head(self.stem(x).mean((2, 3)))


class AuxTrained(TinyNet):
    """A sound model with a parameter trained only by an auxiliary loss (like Sparsifiner's predictor)."""
    aux_loss_params = ('aux',)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.aux = nn.Parameter(torch.ones(8))

    def aux_loss(self, x):
        return (self.stem(x).mean((0, 2, 3)) * self.aux).sum()


class AuxLossMissesParam(AuxTrained):
    def aux_loss(self, x):
        return self.stem(x).mean()


class AuxListsUnknownParam(AuxTrained):
    aux_loss_params = ('aux', 'nonexistent')


def _create(cls):
    return functools.partial(cls)


def test_sound_model_passes():
    contract.check_forward(_create(TinyNet))
    contract.check_backward(_create(TinyNet))
    contract.check_input_sizes(_create(TinyNet))
    contract.check_wrong_channels(_create(TinyNet))
    contract.check_backward(_create(AuxTrained))


@pytest.mark.parametrize('cls, check, match', [
    (UnusedParam, contract.check_backward, 'without gradient.*unused'),
    (CheckpointChangesOutput, contract.check_forward, 'grad checkpointing'),
    (CrashesOnOddSizes, contract.check_input_sizes, 'raised RuntimeError'),
    (NoChannelCheck, contract.check_wrong_channels, 'not a ValueError'),
    (AuxLossMissesParam, contract.check_backward, 'without gradient from aux_loss.*aux'),
    (AuxListsUnknownParam, contract.check_backward, 'names no parameter.*nonexistent'),
])
def test_broken_models_fail(cls, check, match):
    with pytest.raises(AssertionError, match=match):
        check(_create(cls))
