_base_ = [
    '../_base_/models/image_classifier_visionattn.py', '../_base_/datasets/imagenet_bs128_224.py',
    '../_base_/default_runtime_cls.py', '../_base_/schedules/imagenet_adamw_300e.py'
]
# Agent-DeiT-T ImageNet-1k 300 epochs: 74.9% top-1 (Agent-Attention README (LeapLabTHU/Agent-Attention))
model = dict(model_name='agent_deit_tiny', drop_path_rate=0.0)
# 8 GPUs x 128 images
train_dataloader = dict(batch_size=128)
