# official: ziplab/LITv2@7501c8662991cad6db780b61fac0886b56a76588:classification/configs/litv2-medium.yaml
# (with the defaults of classification/config.py, the linear lr scaling of main.py and optimizer.py)
# remaining differences: mmpretrain's RandAugment / random erasing / Mixup-CutMix stand for timm's (same magnitudes
# and probabilities); the official (Swin) cosine spans all 300 epochs under the warm-up, here it follows the warm-up
# (epochs 20-300); apex O1 -> torch AMP with a dynamic loss scale
_base_ = [
    '../_base_/models/image_classifier_visionattn.py', '../_base_/datasets/imagenet_bs128_224.py',
    '../_base_/default_runtime_cls.py', '../_base_/schedules/imagenet_adamw_300e.py'
]
# LITv2-M ImageNet-1k 300 epochs (Swin recipe): 83.3% top-1 (LITv2 README (ziplab/LITv2))
model = dict(model_name='litv2_medium', drop_path_rate=0.3)
# 8 GPUs x 128 images (classification/README.md: total batch 1024); AdamW lr 5e-4 x 1024 / 512, wd 0.05, 20 warm-up
# epochs from 1e-6, cosine to 1e-5, grad clip 5, label smoothing 0.1, mixup 0.8 / cutmix 1.0 (the base schedule)
train_dataloader = dict(batch_size=128)
# apex O1 mixed precision (main.py: --amp-opt-level O1 by default; dynamic loss scale), fp32 on CPU (see
# visionattn.mm.runner.load_config); the deformable offset convolutions' weights train at 0.01x the base rate
# (OFFSET_LR_MULTI 0.01; their biases take the base rate without weight decay)
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    paramwise_cfg=dict(custom_keys={'.conv_offset.weight': dict(lr_mult=0.01)}))
