"""Agent attention (Agent Attention, ECCV 2024, arXiv 2312.08874, https://github.com/LeapLabTHU/Agent-Attention).

A generalised linear attention: ``n`` agent tokens ``A`` (pooled from the queries) first aggregate the values with
a softmax over the keys, then broadcast them back with a softmax over the agents::

    V_A = softmax(s A K^T + B_a) V          # [B, h, n, d]   agent aggregation
    O   = softmax(s Q A^T + B_q) V_A        # [B, h, N, d]   agent broadcast

Both softmaxes are ordinary biased attentions, so the fast path is two ``scaled_dot_product_attention`` calls with
float masks (O(N n d) time and memory, no N x N matrix). The bias resizing rules of the official code (bilinear over
the token grid, then bilinear over the agent grid, as the official downstream backbones do at every forward) are
here as functions, so that every host computes them the same way.

Layouts are heads-first ``[B, heads, tokens, head_dim]`` (SDPA's), biases ``[heads, n, M]`` and ``[heads, N, n]``
(broadcast over the batch).
"""
from typing import Optional, Tuple

import torch.nn.functional as F
from torch import Tensor

from ._dispatch import is_exporting
from .reference.agent import agent_attention_reference

__all__ = [
    'agent_attention', 'agent_attention_reference', 'resize_token_bias', 'resize_agent_axis', 'agent_grid_bias']


def agent_attention(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        agents: Tensor,
        agent_bias: Optional[Tensor],
        query_bias: Optional[Tensor],
        scale: float,
        dropout_p: float = 0.,
) -> Tensor:
    """Agent attention of queries ``q`` ``[B, h, N, d]`` over keys/values ``k``, ``v`` ``[B, h, M, d]`` through
    ``agents`` ``[B, h, n, d]``.

    Args:
        q: Queries.
        k: Keys.
        v: Values.
        agents: Agent tokens (the official code pools them from the unscaled queries).
        agent_bias: ``[h, n, M]`` (or broadcastable) bias of the agent-to-key logits, or None.
        query_bias: ``[h, N, n]`` (or broadcastable) bias of the query-to-agent logits, or None.
        scale: Logit scale (``head_dim ** -0.5`` in every official model).
        dropout_p: Dropout on both attention maps (the official ``attn_drop``); pass 0 in eval.

    Returns:
        ``[B, h, N, d]``.
    """
    dt = q.dtype
    agent_bias = agent_bias.to(dt) if agent_bias is not None else None
    query_bias = query_bias.to(dt) if query_bias is not None else None
    agent_v = F.scaled_dot_product_attention(agents, k, v, attn_mask=agent_bias, dropout_p=dropout_p, scale=scale)
    return F.scaled_dot_product_attention(q, agents, agent_v, attn_mask=query_bias, dropout_p=dropout_p, scale=scale)


def resize_token_bias(bias: Tensor, feat_size: Tuple[int, int]) -> Tensor:
    """A ``[h, n, Hb, Wb]`` bias over a token grid resized to ``feat_size`` (bilinear, ``align_corners=False``, the
    official rule; the identity at the same size)."""
    if not is_exporting() and tuple(bias.shape[-2:]) == tuple(feat_size):  # exporting: no size baked in
        return bias
    return F.interpolate(bias, size=tuple(feat_size), mode='bilinear', align_corners=False)


def resize_agent_axis(bias: Tensor, agent_shape: Tuple[int, int]) -> Tensor:
    """Resize the agent axis (dim 1, ``n0 = p * p`` agents on a square grid) of a ``[h, n0, M]`` bias to the
    ``agent_shape`` grid (bilinear): the official downstream rule for more agents than in pretraining."""
    h, n0, M = bias.shape
    p = int(round(n0 ** 0.5))
    if p * p != n0:
        raise ValueError(f'{n0} agents do not form a square grid; cannot resize them to {tuple(agent_shape)}')
    if (p, p) == tuple(agent_shape):
        return bias
    x = bias.reshape(h, p, p, M).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=tuple(agent_shape), mode='bilinear', align_corners=False)
    return x.reshape(h, M, -1).transpose(1, 2)


def agent_grid_bias(
        pos_bias: Tensor,
        hw_bias: Tensor,
        feat_size: Tuple[int, int],
        agent_shape: Tuple[int, int],
) -> Tensor:
    """The ``[h, n, H*W]`` agent-token bias over an ``H x W`` grid from its two official parts.

    Args:
        pos_bias: ``[h, n0, 7, 7]`` (``an_bias`` / ``na_bias``), always resized to the grid.
        hw_bias: ``[h, n0, Hw, Ww]``, the sum of the per-row and per-column biases of the training grid
            (``ah_bias + aw_bias``, or ``ha_bias + wa_bias`` moved to this layout); resized only if the grid differs.
        feat_size: ``(H, W)``.
        agent_shape: Agent grid; differs from ``n0``'s square grid for the official downstream agent counts.
    """
    b = resize_token_bias(pos_bias, feat_size) + resize_token_bias(hw_bias, feat_size)
    return resize_agent_axis(b.flatten(2), agent_shape)
