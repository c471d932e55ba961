_base_ = ['./mask2former_transnext_tiny_ade20k.py']
# TransNeXt-Base Mask2Former, ADE20K 160k, 512x512: 54.7 mIoU (TransNeXt README (DaiShiResearch/TransNeXt),
# segmentation/mask2former); drop path 0.6 as its mm backbone; the recipe of the tiny config
model = dict(
    backbone=dict(
        arch='transnext_base',
        drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/DaiShiResearch/transnext-base-224-1k/resolve/main/transnext_base_224_1k.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768]))
