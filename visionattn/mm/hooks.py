"""mmengine hooks for visionattn training recipes."""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

__all__ = ['KeepRateHook']


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
