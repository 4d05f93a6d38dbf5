"""Pure tensor functions (no parameters). Layout ``[B, T, H, K]``; every op takes ``impl=``."""

from attnzoo.ops.common import attention_flops
from attnzoo.ops.masks import MASK_KINDS, Mask, as_mask
from attnzoo.ops.sigmoid import sigmoid_attention
from attnzoo.ops.softmax import softmax_attention

__all__ = [
    "MASK_KINDS",
    "Mask",
    "as_mask",
    "attention_flops",
    "sigmoid_attention",
    "softmax_attention",
]
