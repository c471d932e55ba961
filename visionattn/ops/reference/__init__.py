"""Reference (oracle) implementations of the ops: slow, dense, obviously correct, plain torch ops with autograd.

One module per op family (``reference/<op>.py``). Every fast backend is tested against these; they build the full
attention pattern explicitly from the definition and use O(tokens^2) memory, so they are meant for tests and small
inputs. The ``reference`` backend of each op (``backend='reference'``, or ``force_backend('reference')``) runs them.
"""
from .agent import agent_attention_reference
from .aggregated import aggregated_attention_reference
from .block_sparse import block_sparse_attention_reference
from .neighborhood import gna_axis_mask, gna_mask, gna_reference
from .topk import topk_attention_reference, topk_index_to_mask
