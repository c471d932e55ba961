_base_ = [
    '../_base_/models/image_classifier_visionattn.py', '../_base_/datasets/imagenet_bs128_224.py',
    '../_base_/default_runtime_cls.py', '../_base_/schedules/imagenet_adamw_300e.py'
]
# BiFormer-T ImageNet-1k 300 epochs (DeiT recipe, EMA): 81.4% top-1 (BiFormer README (rayleizhu/BiFormer))
model = dict(model_name='biformer_tiny', drop_path_rate=0.15)
# 8 GPUs x 128 images
train_dataloader = dict(batch_size=128)
custom_hooks = [dict(type='EMAHook', momentum=4e-5, priority='ABOVE_NORMAL')]
