"""visionattn: efficient attention backbones for vision, timm-registered, with fused kernels and OpenMMLab adapters."""
import os

from setuptools import find_packages, setup


def _read_version() -> str:
    with open(os.path.join(os.path.dirname(__file__), 'visionattn', 'version.py')) as f:
        scope: dict = {}
        exec(f.read(), scope)
        return scope['__version__']


def _ext_modules():
    # The compiled CUDA extension (kernels/) is built only where CUDA is present; everything works without it.
    if os.environ.get('VISIONATTN_NO_CUDA_EXT') or not os.path.isdir('kernels/csrc'):
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        return {}
    if CUDA_HOME is None or not torch.cuda.is_available():
        return {}
    srcs = [os.path.join('kernels/csrc', f) for f in sorted(os.listdir('kernels/csrc')) if f.endswith(('.cpp', '.cu'))]
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
    packages=find_packages(include=['visionattn', 'visionattn.*']),
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
