"""Where the C/C++ sources of the CPU kernels live (``kernels/cpu`` at the repository root)."""
from pathlib import Path

__all__ = ['source_dir']


def source_dir() -> Path:
    """The folder holding the ``kernels/cpu`` sources."""
    return Path(__file__).resolve().parents[3] / 'kernels' / 'cpu'
