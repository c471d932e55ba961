"""RNGStateHook: the generators' states survive a checkpoint (safe loading included) and come back right before the
first batch after mmengine's resume skip, whatever the skip drew."""
import io
import random

import numpy as np
import pytest
import torch

from . import require

pytestmark = pytest.mark.mm
require('mmengine')
require('visionattn.mm')

from visionattn.mm.hooks import RNGStateHook, _RestoreAfterSkip, get_rng_state, set_rng_state  # noqa: E402


def _draw():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_state_roundtrip_through_a_weights_only_checkpoint():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    _draw()
    buf = io.BytesIO()
    torch.save({'meta': {'rng_state': get_rng_state()}}, buf)
    want = _draw()
    _draw()  # move every generator on
    buf.seek(0)
    set_rng_state(torch.load(buf, weights_only=True)['meta']['rng_state'])
    assert _draw() == want


def test_restore_happens_after_the_skip():
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    state = get_rng_state()
    want = _draw()
    random.seed(3), np.random.seed(3), torch.manual_seed(3)  # the resumed process: other states
    it = _RestoreAfterSkip(iter(lambda: _draw(), None), 2, state)
    drawn = [next(it) for _ in range(3)]
    assert drawn[0] != want and drawn[1] != want  # the two skipped batches draw from the process' own state
    assert drawn[2] == want  # the first new batch draws what the uninterrupted run drew


class _Loop:
    def __init__(self):
        self.iter = 0
        self.dataloader_iterator = iter(lambda: _draw(), None)


class _Runner:
    def __init__(self, resume):
        self._resume = resume
        self.train_loop = _Loop()
        self.logger = None


def test_hook_saves_and_restores():
    hook = RNGStateHook()
    ckpt = {'meta': {}}
    torch.manual_seed(4)
    hook.before_save_checkpoint(None, ckpt)
    want = _draw()
    runner = _Runner(resume=True)
    hook.after_load_checkpoint(runner, ckpt)
    hook.before_train(runner)
    assert next(runner.train_loop.dataloader_iterator) == want
    # load_from (not a resume) leaves the generators alone
    hook, runner = RNGStateHook(), _Runner(resume=False)
    hook.after_load_checkpoint(runner, ckpt)
    hook.before_train(runner)
    assert not isinstance(runner.train_loop.dataloader_iterator, _RestoreAfterSkip)
