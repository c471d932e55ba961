"""``@triton.jit`` helpers that the block-sparse and top-k kernels share (inlined into each kernel)."""
import triton
import triton.language as tl

__all__ = ['row_tile', 'softmax_step']


@triton.jit
def row_tile(H, rows, D: tl.constexpr, DV: tl.constexpr, BH_AXIS: tl.constexpr, BLOCK_M: tl.constexpr,
             BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """The program's ``batch * H + head`` (program axis ``BH_AXIS``), batch and head, its ``BLOCK_M`` rows of ``rows``
    (program axis 0) and the head-dim offsets of q/k (``D``) and v (``DV``), each with its mask."""
    bh = tl.program_id(BH_AXIS)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    return bh, bh // H, bh % H, offs_m, offs_d, offs_dv, offs_m < rows, offs_d < D, offs_dv < DV


@triton.jit
def softmax_step(s, m_i, l_i):
    """One online-softmax step over the fp32 logits ``s`` ``[BLOCK_M, N]`` (rows still all ``-inf`` stay at 0):
    ``(p, alpha, m_new, l_new)``, the chunk's probabilities, the rescale of the running sums and the new max / sum."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float('-inf'), 0., m_new)
    p = tl.exp(s - m_safe[:, None])
    alpha = tl.exp(m_i - m_safe)
    return p, alpha, m_new, l_i * alpha + tl.sum(p, 1)
