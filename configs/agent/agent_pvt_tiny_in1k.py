_base_ = [
    '../_base_/models/image_classifier_visionattn.py', '../_base_/datasets/imagenet_bs128_224.py',
    '../_base_/default_runtime_cls.py', '../_base_/schedules/imagenet_adamw_300e.py'
]
# Agent-PVT-T ImageNet-1k 300 epochs: 78.4% top-1 (Agent-Attention README (LeapLabTHU/Agent-Attention))
model = dict(model_name='agent_pvt_tiny', drop_path_rate=0.1)
# 8 GPUs x 128 images
train_dataloader = dict(batch_size=128)
