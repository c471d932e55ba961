"""mmengine hooks for visionattn training recipes."""
import random

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

__all__ = ['KeepRateHook', 'RNGStateHook', 'SparsifinerPhaseHook']


def get_rng_state() -> dict:
    """The generators training draws from (python ``random``, numpy's global one, torch's CPU and CUDA ones), as
    tensors and plain data (loadable with ``weights_only=True``)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = dict(
        python=(version, list(mt), gauss),
        numpy=(kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``get_rng_state`` returned."""
    version, mt, gauss = state['python']
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


class _RestoreAfterSkip:
    """The train loop's data iterator, restoring the RNG state just before the first batch after the resume skip.

    mmengine's ``IterBasedTrainLoop.run`` advances the data iterator by the resumed iteration count (running the
    pipeline, which draws augmentations from the global generators) before the first new batch; the state saved with
    the checkpoint is the one the uninterrupted run had right before fetching that batch.
    """

    def __init__(self, iterator, skip: int, state: dict):
        self._iterator, self._skip, self._state = iterator, skip, state

    def __next__(self):
        if self._state is not None:
            if self._skip == 0:
                set_rng_state(self._state)
                self._state = None
            else:
                self._skip -= 1
        return next(self._iterator)

    def __iter__(self):
        return self

    def __getattr__(self, name):
        return getattr(self._iterator, name)


class RNGStateHook(Hook):
    """Bitwise resume: the RNG state goes into every checkpoint (``meta['rng_state']``) and comes back on resume.

    Without it a resumed run draws other drop-path masks, dropouts and augmentations than the uninterrupted one
    (mmengine seeds the generators once, at start-up). Saved after the iteration, restored right before the first
    batch after the resume (``_RestoreAfterSkip``), so the resumed run equals the uninterrupted one bitwise on the CPU
    with ``num_workers=0``. With data-loader worker processes the workers' own generators are not captured (they are
    reseeded when the workers start), so augmentations after a resume may differ there. ``tools/train.py`` and
    ``tools/demo.py`` register it on every runner (``visionattn.mm.runner.build_runner``).
    """

    priority = 'VERY_LOW'

    def __init__(self):
        self._resumed = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint.setdefault('meta', {})['rng_state'] = get_rng_state()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._resumed = checkpoint.get('meta', {}).get('rng_state')
        if self._resumed is None and runner._resume:
            runner.logger.warning('RNGStateHook: the checkpoint has no RNG state; the resumed run is not bitwise')

    def before_train(self, runner) -> None:
        loop = runner.train_loop
        if self._resumed is not None and runner._resume and hasattr(loop, 'dataloader_iterator'):
            loop.dataloader_iterator = _RestoreAfterSkip(loop.dataloader_iterator, loop.iter, self._resumed)
        elif self._resumed is not None and runner._resume:
            set_rng_state(self._resumed)  # epoch-based loops build their iterator per epoch
        self._resumed = None


class KeepRateHook(Hook):
    """EViT's keep-rate warm-up in an mmengine run (the official ``--shrink_start_epoch/--shrink_epochs``).

    Before every training iteration the keep rate of the model's reorganizing blocks follows
    ``visionattn.models.evit.KeepRateScheduler``: 1 until ``shrink_start_epoch``, then a cosine down to
    ``base_keep_rate`` over ``shrink_epochs``. Works on any module in the runner's model that has ``set_keep_rate``.
    """

    priority = 'NORMAL'

    def __init__(self, base_keep_rate=None, shrink_start_epoch: int = 10, shrink_epochs: int = 100):
        self.base_keep_rate = base_keep_rate
        self.shrink_start_epoch = shrink_start_epoch
        self.shrink_epochs = shrink_epochs
        self._scheduler = None

    def before_train(self, runner) -> None:
        from visionattn.models.evit import KeepRateScheduler

        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        target = next((m for m in model.modules() if hasattr(m, 'set_keep_rate')), None)
        if target is None:
            raise ValueError('KeepRateHook: the model has no module with set_keep_rate() (expected an EViT)')
        self._scheduler = KeepRateScheduler(
            target, self.base_keep_rate, self.shrink_start_epoch, self.shrink_epochs,
            iters_per_epoch=max(len(runner.train_dataloader), 1))

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        iters = self._scheduler.iters_per_epoch
        rate = self._scheduler.step(runner.iter // iters, runner.iter % iters)
        runner.message_hub.update_scalar('train/keep_rate', rate)


class SparsifinerPhaseHook(Hook):
    """Sparsifiner's two training phases (the official ``TRAIN_STRATEGY``) for a ``SparsifinerClassifier``.

    Phase ``'recon'`` until ``switch_epoch`` (or ``switch_iter``, for iteration-based loops): the student runs in
    attention-reconstruction mode and only its connectivity predictors train (the backbone is frozen); then phase
    ``'distill'``: sparse attention, the predictors frozen, the backbone trains with CE + distillation. Freezing is
    ``requires_grad``: frozen parameters get no gradient, so the optimizer (AdamW, SGD) leaves them alone, and the
    learning rates of the phases come from the config's ``param_scheduler`` (see
    configs/sparsifiner/sparsifiner_deit_small_patch16_224_2phase_in1k.py). When training starts from iteration 0 the
    student's weights (after ``load_from`` / ``init_cfg``) are copied into the dense teacher; a resumed run keeps the
    teacher of its checkpoint.

    Args:
        switch_epoch: First epoch of the second phase (official 5 of 50).
        switch_iter: First iteration of the second phase; overrides ``switch_epoch`` when given.
    """

    priority = 'NORMAL'

    def __init__(self, switch_epoch: int = 5, switch_iter=None):
        self.switch_epoch = switch_epoch
        self.switch_iter = switch_iter

    def _phase(self, runner) -> str:
        if self.switch_iter is not None:
            return 'recon' if runner.iter < self.switch_iter else 'distill'
        return 'recon' if runner.epoch < self.switch_epoch else 'distill'

    @staticmethod
    def _classifier(runner):
        from .sparsifiner import unwrap_classifier

        clf = unwrap_classifier(runner.model)
        if clf is None:
            raise ValueError('SparsifinerPhaseHook: the model is not a SparsifinerClassifier')
        return clf

    @staticmethod
    def apply_phase(clf, phase: str) -> None:
        """Set ``phase`` on the classifier: the student's mode and which parameters train."""
        student = clf.model
        student.set_attn_recon(phase == 'recon')
        for name, p in student.named_parameters():
            p.requires_grad_(('.mask_predictor.' in name) == (phase == 'recon'))
        clf.phase = phase

    def before_train(self, runner) -> None:
        clf = self._classifier(runner)
        if runner.iter == 0:
            clf.sync_teacher()
        phase = self._phase(runner)
        self.apply_phase(clf, phase)
        runner.logger.info(f'SparsifinerPhaseHook: phase {phase!r} at iteration {runner.iter}')

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        clf = self._classifier(runner)
        phase = self._phase(runner)
        if phase != clf.phase:
            self.apply_phase(clf, phase)
            runner.logger.info(f'SparsifinerPhaseHook: switched to phase {phase!r} at iteration {runner.iter} '
                               f'(epoch {runner.epoch})')
        runner.message_hub.update_scalar('train/sparsifiner_phase', 0 if phase == 'recon' else 1)
