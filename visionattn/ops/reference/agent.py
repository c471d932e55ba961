"""Reference (oracle) of agent attention: the official computation with explicit softmaxes."""
from typing import Optional

from torch import Tensor

__all__ = ['agent_attention_reference']


def agent_attention_reference(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        agents: Tensor,
        agent_bias: Optional[Tensor],
        query_bias: Optional[Tensor],
        scale: float,
) -> Tensor:
    """The oracle: the official computation, explicit softmaxes (``(A * s) @ K^T + B``, as the official code)."""
    attn = (agents * scale) @ k.transpose(-2, -1)
    if agent_bias is not None:
        attn = attn + agent_bias
    agent_v = attn.softmax(dim=-1) @ v
    attn = (q * scale) @ agents.transpose(-2, -1)
    if query_bias is not None:
        attn = attn + query_bias
    return attn.softmax(dim=-1) @ agent_v
