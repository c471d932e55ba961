# official: qhfan/RALA@a86314f62103c21a1c7e6d826fe4cb0f5586e7b0:detection/configs/RALA/casrcnn_l_3x.py
# (mmdet 2.x form, with its _base_ files: models/RALA_cas_rcnn.py, datasets/coco_instance.py, schedules/schedule_1x.py)
# remaining differences: mmdet 3.x config form only (AutoAugment of two policies -> RandomChoice; the same
# multi-scale + crop schedule of sizes)
_base_ = './cascade_mask_rcnn_ravlt_small_fpn_3x_coco.py'
# RAVLT-L Cascade Mask R-CNN 3x, COCO: 55.6 box AP, 48.0 mask AP (RALA README (qhfan/RALA))
model = dict(
    backbone=dict(
        arch='ravlt_large',
        drop_path_rate=0.55,
        init_cfg=dict(type='Pretrained', checkpoint='https://huggingface.co/aldjalkdf/RAVLT/resolve/main/RAVLT_L.pth')),
    neck=dict(in_channels=[96, 192, 448, 640]))
