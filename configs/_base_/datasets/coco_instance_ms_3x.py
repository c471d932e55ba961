# COCO instance segmentation, the multi-scale + crop training of the Swin / NAT / DiNAT 3x recipes ("augmentation
# strategy originates from DETR / Sparse RCNN"; mmdet's mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco): either a shorter
# side of 480-800 (step 32), or a shorter side of 400/500/600, a random crop of 384-600 pixels, then 480-800
_base_ = './coco_instance.py'
scales = [(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333), (672, 1333), (704, 1333),
          (736, 1333), (768, 1333), (800, 1333)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=scales, keep_ratio=True)],
            [dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)], keep_ratio=True),
             dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600), allow_negative_crop=True),
             dict(type='RandomChoiceResize', scales=scales, keep_ratio=True)]
        ]),
    dict(type='PackDetInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
