# The Agent-Swin detection optimizer (LeapLabTHU/Agent-Attention downstream/detection agent_swin_*_{mrcnn,crcnn}
# configs, shared by the Mask R-CNN and Cascade Mask R-CNN leaves): AdamW lr 1e-4 wd 0.05, no decay on norms, position
# tables and agent biases (official keys); the 1x schedule (500-iteration warm-up, steps at 8 and 11 of 12 epochs)
_base_ = './schedule_1x_adamw.py'
no_decay = dict(decay_mult=0.)
optim_wrapper = dict(
    optimizer=dict(lr=1e-4, weight_decay=0.05),
    paramwise_cfg=dict(
        _delete_=True,
        custom_keys={
            'absolute_pos_embed': no_decay,
            'relative_position_bias_table': no_decay,
            'norm': no_decay,
            'an_bias': no_decay,
            'na_bias': no_decay,
            'ah_bias': no_decay,
            'aw_bias': no_decay,
            'ha_bias': no_decay,
            'wa_bias': no_decay,
        }))
