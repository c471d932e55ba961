"""The OpenMMLab tier. Its modules import the toolboxes with `require`, never `pytest.importorskip`: a tier that
skips itself on an ImportError inside the adapter or a broken mmcv build would keep CI green while testing nothing."""
import importlib
import importlib.metadata
import importlib.util
import os
import types

import pytest

# distributions of the [mm] extra (setup.py); any one of them present means the extra was meant to be installed
MM_DISTRIBUTIONS = ('mmengine', 'mmcv', 'mmsegmentation', 'mmdet', 'mmpretrain')


def _truthy(value: str) -> bool:
    return value.strip().lower() not in ('', '0', 'false', 'no', 'off')


def mm_extra_expected() -> bool:
    """Whether the OpenMMLab tier must run: under CI (`CI` set truthy), or when any part of the [mm] extra is
    installed (mmengine importable, or distribution metadata of mmengine/mmcv/mmseg/mmdet/mmpretrain present)."""
    if _truthy(os.environ.get('CI', '')):
        return True
    try:
        if importlib.util.find_spec('mmengine') is not None:
            return True
    except (ImportError, ValueError):
        return True  # a broken mmengine is installed
    for dist in MM_DISTRIBUTIONS:
        try:
            importlib.metadata.distribution(dist)
            return True
        except importlib.metadata.PackageNotFoundError:
            continue
    return False


def require(name: str) -> types.ModuleType:
    """Import `name` for the OpenMMLab tier: skip only when the [mm] extra is truly absent; otherwise an import
    failure fails the run (at module level: a collection error) with the original exception chained."""
    expected = mm_extra_expected()
    try:
        return importlib.import_module(name)
    except Exception as e:  # any failure while importing a toolbox counts, not only ImportError
        if not expected:
            pytest.skip(f'[mm] extra not installed ({name}: {e})', allow_module_level=True)
        raise ImportError(
            f'{name} failed to import although the [mm] extra is installed or CI is set: {type(e).__name__}: {e}'
        ) from e
