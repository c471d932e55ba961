"""mmengine hooks for visionattn training recipes."""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

__all__ = ['KeepRateHook', 'SparsifinerPhaseHook']


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
