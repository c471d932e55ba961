_base_ = [
    '../_base_/models/image_classifier_visionattn.py', '../_base_/datasets/imagenet_bs128_224.py',
    '../_base_/default_runtime_cls.py', '../_base_/schedules/imagenet_adamw_300e.py'
]
# Agent-PVT-L ImageNet-1k 300 epochs: 83.7% top-1 (Agent-Attention README (LeapLabTHU/Agent-Attention))
model = dict(model_name='agent_pvt_large', drop_path_rate=0.3)
# 8 GPUs x 128 images
train_dataloader = dict(batch_size=128)
