_base_ = [
    '../_base_/models/image_classifier_visionattn.py', '../_base_/datasets/imagenet_bs128_224.py',
    '../_base_/default_runtime_cls.py', '../_base_/schedules/imagenet_adamw_300e.py'
]
# Agent-CSwin-B ImageNet-1k 300 epochs: 84.7% top-1 (Agent-Attention README (LeapLabTHU/Agent-Attention))
model = dict(model_name='agent_cswin_base', drop_path_rate=0.5)
# 8 GPUs x 128 images
train_dataloader = dict(batch_size=128)
