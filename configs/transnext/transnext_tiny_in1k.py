_base_ = [
    '../_base_/models/image_classifier_visionattn.py', '../_base_/datasets/imagenet_bs128_224.py',
    '../_base_/default_runtime_cls.py', '../_base_/schedules/imagenet_adamw_300e.py'
]
# TransNeXt-Tiny ImageNet-1k 300 epochs (DeiT/PVT recipe, grad clip 1.0, no EMA): 84.0% top-1 (TransNeXt README
# (DaiShiResearch/TransNeXt))
model = dict(model_name='transnext_tiny', drop_path_rate=0.25)
# 8 GPUs x 128 images
train_dataloader = dict(batch_size=128)
optim_wrapper = dict(clip_grad=dict(max_norm=1.0))
