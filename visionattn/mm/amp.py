"""``AmpOrFp32OptimWrapper``: mmengine's ``AmpOptimWrapper`` where an accelerator is present, fp32 elsewhere.

The official runs that trained in fp16 (e.g. TransNeXt-B Mask R-CNN, ``fp16 = dict(loss_scale=512.)``) are
reproduced with ``optim_wrapper = dict(type='AmpOrFp32OptimWrapper', loss_scale=512., ...)``. mmengine's
``AmpOptimWrapper`` refuses to build without a GPU/NPU/MLU/MUSA; on such a machine (CPU tests, demo runs) this type
builds a plain ``OptimWrapper`` instead (fp32, the AMP options dropped) and logs that it did.
"""
from mmengine.device import is_cuda_available, is_mlu_available, is_musa_available, is_npu_available
from mmengine.logging import print_log
from mmengine.optim import AmpOptimWrapper, OptimWrapper

__all__ = ['AmpOrFp32OptimWrapper']

_AMP_ONLY = ('loss_scale', 'dtype', 'use_fsdp')


class AmpOrFp32OptimWrapper(OptimWrapper):
    """Builds ``AmpOptimWrapper(**kwargs)`` on an accelerator, otherwise ``OptimWrapper`` without the AMP options."""

    def __new__(cls, *args, **kwargs):
        if is_cuda_available() or is_npu_available() or is_mlu_available() or is_musa_available():
            return AmpOptimWrapper(*args, **kwargs)
        dropped = {k: kwargs.pop(k) for k in _AMP_ONLY if k in kwargs}
        print_log(f'AmpOrFp32OptimWrapper: no accelerator, training in fp32 (ignored {dropped})', logger='current')
        return OptimWrapper(*args, **kwargs)
