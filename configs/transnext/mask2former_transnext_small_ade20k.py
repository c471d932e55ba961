_base_ = ['./mask2former_transnext_tiny_ade20k.py']
# TransNeXt-Small Mask2Former, ADE20K 160k, 512x512: 54.1 mIoU (TransNeXt README (DaiShiResearch/TransNeXt),
# segmentation/mask2former); drop path 0.5 as its mm backbone; the recipe of the tiny config
model = dict(
    backbone=dict(
        arch='transnext_small',
        drop_path_rate=0.5,
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/DaiShiResearch/transnext-small-224-1k/resolve/main/transnext_small_224_1k.pth')),
    decode_head=dict(in_channels=[72, 144, 288, 576]))
