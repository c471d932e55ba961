"""Agent attention mixer shared by the Agent-DeiT, Agent-PVT, Agent-Swin and Agent-CSwin hosts.

Agent Attention (ECCV 2024, arXiv 2312.08874), https://github.com/LeapLabTHU/Agent-Attention (no license file).
Parameter names are the official ones (``qkv`` or ``q``/``kv``, ``proj``, ``dwc``, ``an_bias``, ``na_bias``,
``ah_bias``, ``aw_bias``, ``ha_bias``, ``wa_bias`` and, with a class token, ``ac_bias``/``ca_bias``), so official
state dicts load unchanged (Agent-CSwin's ``get_v`` is this layer's ``dwc``).

The official classification models fix the bias shapes, and so the input size, to the training grid; the official
downstream backbones resize every bias at each forward. Here the biases for an input grid are resized once and
cached while no gradient is needed (eval/inference), recomputed while training; at the training grid and agent count
they equal the official classification biases, at other grids and agent counts the official downstream ones.
"""
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module, to_2tuple, trunc_normal_
from torch import Tensor

from ..ops._dispatch import is_exporting
from ..ops.agent import agent_attention, agent_grid_bias, resize_agent_axis

__all__ = ['AgentAttention']


def _pool_matrix(size: int, out: int, like: Tensor) -> Tensor:
    """``[out, size]`` averaging matrix of adaptive average pooling along one axis: bin ``i`` averages
    ``[floor(i * size / out), ceil((i + 1) * size / out))`` (PyTorch's rule)."""
    i = torch.arange(out, device=like.device)
    start = (i * size) // out
    end = ((i + 1) * size + out - 1) // out
    j = torch.arange(size, device=like.device)
    mask = (j[None] >= start[:, None]) & (j[None] < end[:, None])
    return mask.to(like.dtype) / (end - start)[:, None].to(like.dtype)


def adaptive_avg_pool2d(x: Tensor, output_size: Tuple[int, int]) -> Tensor:
    """``F.adaptive_avg_pool2d``; while exporting, two averaging matmuls whose bins are computed from the runtime
    size (the exporters otherwise bake in the kernel of the example size, so the graph rejects other sizes)."""
    if not is_exporting():
        return F.adaptive_avg_pool2d(x, output_size)
    ph = _pool_matrix(x.shape[-2], output_size[0], x)
    pw = _pool_matrix(x.shape[-1], output_size[1], x)
    return ph @ x @ pw.transpose(0, 1)


@register_notrace_module  # reason: biases resized from the input grid size (cached), which FX cannot trace
class AgentAttention(nn.Module):
    """Agent attention over tokens on an ``H x W`` grid (plus optional prefix tokens such as a class token).

    Args:
        dim: Channels.
        num_heads: Heads.
        window_size: The training grid ``(H, W)``; sets the shapes of the per-row/column biases.
        agent_num: Agents in the checkpoint (a square number, pooled to a ``sqrt x sqrt`` grid).
        agent_shape: Agent grid used at run time (the official downstream ``downstream_agent_shape``); the agent
            biases are resized to it. Defaults to the square grid of ``agent_num``.
        qkv_layout: ``'qkv'`` (one ``Linear(dim, 3 dim)``: DeiT, Swin), ``'q_kv'`` (``q`` and ``kv``: PVT) or
            ``'none'`` (the caller projects and calls :meth:`attend`: CSwin).
        qkv_bias: Bias of the q/k/v projections.
        proj: Output projection ``proj`` (False: the caller projects).
        num_prefix_tokens: Tokens before the grid (1 for DeiT's class token): they get ``ac_bias``/``ca_bias``, are
            not pooled into agents and get no depthwise-conv term.
        kernel_size: Kernel of the depthwise conv on V (``dwc``).
        attn_drop: Dropout on both attention maps.
        proj_drop: Dropout after ``proj``.
        scale_exp: Logit scale exponent, ``head_dim ** scale_exp`` (the official downstream ``scale``).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size: Union[int, Tuple[int, int]],
            agent_num: int = 49,
            agent_shape: Optional[Sequence[int]] = None,
            qkv_layout: str = 'qkv',
            qkv_bias: bool = True,
            proj: bool = True,
            num_prefix_tokens: int = 0,
            kernel_size: int = 3,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            scale_exp: float = -0.5,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim ({dim}) must be divisible by num_heads ({num_heads})')
        if qkv_layout not in ('qkv', 'q_kv', 'none'):
            raise ValueError(f"qkv_layout must be 'qkv', 'q_kv' or 'none', got {qkv_layout!r}")
        pool = int(round(agent_num ** 0.5))
        if pool * pool != agent_num:
            raise ValueError(f'agent_num must be a square number, got {agent_num}')
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** scale_exp
        self.window_size = to_2tuple(window_size)
        self.agent_num = agent_num
        self.agent_shape = tuple(int(a) for a in to_2tuple(agent_shape)) if agent_shape is not None else (pool, pool)
        self.num_prefix_tokens = num_prefix_tokens
        self.qkv_layout = qkv_layout
        if qkv_layout == 'qkv':
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        elif qkv_layout == 'q_kv':
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.dwc = nn.Conv2d(dim, dim, kernel_size=kernel_size, padding=kernel_size // 2, groups=dim)
        Hw, Ww = self.window_size
        self.an_bias = nn.Parameter(torch.zeros(num_heads, agent_num, 7, 7))
        self.na_bias = nn.Parameter(torch.zeros(num_heads, agent_num, 7, 7))
        self.ah_bias = nn.Parameter(torch.zeros(1, num_heads, agent_num, Hw, 1))
        self.aw_bias = nn.Parameter(torch.zeros(1, num_heads, agent_num, 1, Ww))
        self.ha_bias = nn.Parameter(torch.zeros(1, num_heads, Hw, 1, agent_num))
        self.wa_bias = nn.Parameter(torch.zeros(1, num_heads, 1, Ww, agent_num))
        if num_prefix_tokens:
            self.ac_bias = nn.Parameter(torch.zeros(1, num_heads, agent_num, 1))
            self.ca_bias = nn.Parameter(torch.zeros(1, num_heads, 1, agent_num))
        else:
            self.ac_bias = self.ca_bias = None
        self.proj = nn.Linear(dim, dim) if proj else nn.Identity()
        self.proj_drop = nn.Dropout(proj_drop)
        self._bias_cache: Dict[Tuple[int, int], Tuple[tuple, Tuple[Tensor, Tensor]]] = {}
        for p in self._bias_params():
            trunc_normal_(p, std=.02)

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, '
                f'agent_num={self.agent_num}, agent_shape={self.agent_shape}, prefix={self.num_prefix_tokens}')

    def _bias_params(self) -> Tuple[Tensor, ...]:
        ps = (self.an_bias, self.na_bias, self.ah_bias, self.aw_bias, self.ha_bias, self.wa_bias)
        return ps + (self.ac_bias, self.ca_bias) if self.num_prefix_tokens else ps

    def compute_biases(self, feat_size: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
        """The agent-to-key bias ``[h, n, P + H*W]`` and the query-to-agent bias ``[h, P + H*W, n]`` for a grid."""
        h = self.num_heads
        agent_bias = agent_grid_bias(self.an_bias, (self.ah_bias + self.aw_bias)[0], feat_size, self.agent_shape)
        hwa = (self.ha_bias + self.wa_bias)[0].permute(0, 3, 1, 2)  # [h, n0, Hw, Ww]
        query_bias = agent_grid_bias(self.na_bias, hwa, feat_size, self.agent_shape).transpose(1, 2)
        if self.num_prefix_tokens:
            P = self.num_prefix_tokens
            ac = resize_agent_axis(self.ac_bias.reshape(h, self.agent_num, 1), self.agent_shape)
            ca = resize_agent_axis(self.ca_bias.reshape(h, self.agent_num, 1), self.agent_shape).transpose(1, 2)
            agent_bias = torch.cat([ac.expand(-1, -1, P), agent_bias], dim=-1)
            query_bias = torch.cat([ca.expand(-1, P, -1), query_bias], dim=-2)
        return agent_bias, query_bias

    def get_biases(self, feat_size: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
        """:meth:`compute_biases`, cached per grid size while no gradient is needed (the cache is keyed on the
        parameters' storage and version, so optimizer steps, ``load_state_dict`` and ``.to()`` invalidate it)."""
        if torch.jit.is_scripting() or torch.compiler.is_compiling() or is_exporting():  # no traced tensor cached
            return self.compute_biases(feat_size)
        params = self._bias_params()
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return self.compute_biases(feat_size)
        feat_size = (int(feat_size[0]), int(feat_size[1]))
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        hit = self._bias_cache.get(feat_size)
        if hit is not None and hit[0] == key:
            return hit[1]
        with torch.no_grad():
            biases = self.compute_biases(feat_size)
        if len(self._bias_cache) >= 16:
            self._bias_cache.clear()
        self._bias_cache[feat_size] = (key, biases)
        return biases

    def attend(self, q: Tensor, k: Tensor, v: Tensor, feat_size: Tuple[int, int]) -> Tensor:
        """Agent attention of projected ``q``, ``k``, ``v`` ``[B, P + H*W, C]`` (before ``proj``), plus the
        depthwise conv of V on the grid tokens."""
        B, N, C = q.shape
        H, W = feat_size
        P = self.num_prefix_tokens
        h, d = self.num_heads, C // self.num_heads
        grid_q = q[:, P:].transpose(1, 2).reshape(B, C, H, W)
        agents = adaptive_avg_pool2d(grid_q, self.agent_shape).reshape(B, h, d, -1).transpose(-2, -1)
        agent_bias, query_bias = self.get_biases((H, W))
        x = agent_attention(
            q.reshape(B, N, h, d).transpose(1, 2),
            k.reshape(B, N, h, d).transpose(1, 2),
            v.reshape(B, N, h, d).transpose(1, 2),
            agents, agent_bias, query_bias, self.scale,
            dropout_p=self.attn_drop if self.training else 0.,
        ).transpose(1, 2).reshape(B, N, C)
        conv = self.dwc(v[:, P:].transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2)
        if P:
            return torch.cat([x[:, :P], x[:, P:] + conv], dim=1)
        return x + conv

    def forward(self, x: Tensor, feat_size: Tuple[int, int]) -> Tensor:
        """``x`` ``[B, P + H*W, C]`` (prefix tokens first, then the grid row-major) -> same shape."""
        B, N, C = x.shape
        if self.qkv_layout == 'qkv':
            q, k, v = self.qkv(x).reshape(B, N, 3, C).unbind(2)
        elif self.qkv_layout == 'q_kv':
            q = self.q(x)
            k, v = self.kv(x).reshape(B, N, 2, C).unbind(2)
        else:
            raise RuntimeError("qkv_layout='none': call attend(q, k, v, feat_size)")
        return self.proj_drop(self.proj(self.attend(q, k, v, feat_size)))
