"""Reference (oracle) of top-k attention: dense softmax attention with the boolean mask of the index lists."""
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['topk_attention_reference', 'topk_index_to_mask']


def topk_index_to_mask(index: Tensor, num_keys: int, num_dense: int = 0) -> Tensor:
    """The boolean ``[B, heads, num_dense + Nr, num_keys]`` attention mask of ``index`` ``[B, heads, Nr, K]`` (True:
    attend); the first ``num_dense`` rows are all True."""
    B, H, Nr, _ = index.shape
    # out of place, no slice assignment: the ONNX exporter mistranslates a scalar written into a slice
    mask = torch.zeros((B, H, Nr, num_keys), dtype=torch.bool, device=index.device).scatter(-1, index.long(), True)
    if num_dense:
        mask = torch.cat([torch.ones((B, H, num_dense, num_keys), dtype=torch.bool, device=index.device), mask], 2)
    return mask


def topk_attention_reference(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        index: Tensor,
        scale: float,
        num_dense: int = 0,
        dropout_p: float = 0.,
) -> Tensor:
    """The oracle: dense softmax attention with the boolean mask of ``index`` (``topk_index_to_mask``)."""
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # [B, H, N, D]
    mask = topk_index_to_mask(index, k.shape[2], num_dense)
    attn = ((q * scale) @ k.transpose(-2, -1)).masked_fill(~mask, float('-inf')).softmax(dim=-1)
    if dropout_p > 0:
        attn = F.dropout(attn, dropout_p)
    return (attn @ v).transpose(1, 2)
