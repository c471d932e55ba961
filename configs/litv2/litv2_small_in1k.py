_base_ = [
    '../_base_/models/image_classifier_visionattn.py', '../_base_/datasets/imagenet_bs128_224.py',
    '../_base_/default_runtime_cls.py', '../_base_/schedules/imagenet_adamw_300e.py'
]
# LITv2-S ImageNet-1k 300 epochs (Swin recipe): 82.0% top-1 (LITv2 README (ziplab/LITv2))
model = dict(model_name='litv2_small', drop_path_rate=0.2)
# 8 GPUs x 128 images
train_dataloader = dict(batch_size=128)
