"""Pure-PyTorch fast backends, one module per op family (``blocked/<op>.py``).

Each module holds the op's memory-aware PyTorch implementations that run on any device: the ``blocked`` backend
(tiles / chunks batched through SDPA or matmuls) and, where an op has them, its other pure-PyTorch alternatives
(``block_sparse``: ``dense``, ``gather``; ``topk``: ``sparse``, ``masked_sdpa``).
"""
