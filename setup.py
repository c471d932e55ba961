"""visionattn: efficient attention backbones for vision, timm-registered, with fused kernels and OpenMMLab adapters."""
import os

from setuptools import find_packages, setup


def _read_version() -> str:
    with open(os.path.join(os.path.dirname(__file__), 'visionattn', 'version.py')) as f:
        scope: dict = {}
        exec(f.read(), scope)
        return scope['__version__']


# Native sources live at the repository root in kernels/<device>/ (cpu/ now, cuda/ later). They are compiled on the
# user's machine on first use (the C top-k kernel with the system compiler, the C++ kernels through
# torch.utils.cpp_extension.load, JIT and cached), for that machine's CPU and torch: so the wheel ships the sources,
# mapped into the package as visionattn/_kernels/ (visionattn.ops.cpu._sources.source_dir() finds them there, or at
# the root of a checkout), and stays a pure-Python, torch-version-independent wheel.
_KERNEL_SOURCES = ['**/*.c', '**/*.cpp', '**/*.h', '**/*.cu', '**/*.cuh']


def _ext_modules():
    # An ahead-of-time CUDA extension (kernels/cuda/) is built only where CUDA is present and the sources exist; there
    # is none yet, so this returns {} until kernels/cuda/ lands. Everything works without it.
    cuda_dir = os.path.join('kernels', 'cuda')
    if os.environ.get('VISIONATTN_NO_CUDA_EXT') or not os.path.isdir(cuda_dir):
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        return {}
    if CUDA_HOME is None or not torch.cuda.is_available():
        return {}
    srcs = [os.path.join(cuda_dir, f) for f in sorted(os.listdir(cuda_dir)) if f.endswith(('.cpp', '.cu'))]
    if not srcs:
        return {}
    return dict(ext_modules=[CUDAExtension('visionattn._C', srcs)], cmdclass={'build_ext': BuildExtension})


setup(
    name='visionattn',
    version=_read_version(),
    description='Efficient vision attention backbones (timm-registered) with fused kernels and OpenMMLab adapters',
    long_description=open('README.md').read() if os.path.exists('README.md') else '',
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=find_packages(include=['visionattn', 'visionattn.*']) + ['visionattn._kernels'],
    package_dir={'visionattn._kernels': 'kernels'},
    package_data={'visionattn._kernels': _KERNEL_SOURCES},
    install_requires=[
        'torch>=2.4',
        'torchvision',
        'timm>=1.0.3',
        'safetensors',
        'einops',
        'numpy',
        'pillow',
    ],
    extras_require={
        'mm': [
            'mmengine==0.10.7',
            'mmcv==2.1.0',
            'mmsegmentation==1.2.2',
            'mmdet==3.3.0',
            'mmpretrain==1.2.0',
            'albumentations',
            'ftfy',
            'regex',
        ],
        'dev': [
            'pytest',
            'pytest-timeout',
            'ruff',
            'natten==0.21.7',
        ],
        'deploy': [
            'onnx>=1.16',
            'onnxscript>=0.3',
            'onnxruntime>=1.18',
        ],
    },
    **_ext_modules(),
)
