"""Int8 inference forward of MoMask's post-LN transformer encoder (`nn.TransformerEncoder`, batch-first, GELU).

`Int8Linears` packs the four linears of every layer (QKV, attention output, feed-forward in and out) as dynamically
quantized int8 products: weights per output channel, symmetric, packed once; activations per tensor, quantized at
run time (fbgemm / oneDNN). `encoder_forward` runs the layers with them — x = LN1(x + SelfAttention(x));
x = LN2(x + W2·GELU(W1·x)) on (B·S, D) rows, attention by `scaled_dot_product_attention` on views of the QKV product;
attention, LayerNorm and GELU stay in float32. The fp32 path keeps PyTorch's own fused encoder (its outputs are the
reference; a hand-written fp32 forward like this one measured no faster, see bench/RESULTS.md).

Both forwards can stop the last layer at selected rows (`rows`, B × S bool): the masked transformer reads its logits
only at [MASK] positions, so the last layer's attention still covers every position (keys and values need them all)
but its output projection (int8 path), residuals, LayerNorms and feed-forward run only on the rows asked for.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Linear = Callable[[Tensor], Tensor]


def int8_linear(weight: Tensor, bias: Tensor | None) -> Linear:
    """x → x·Wᵀ + b with W quantized once per output channel and x quantized per call."""
    weight = weight.detach().float()
    scales = (weight.abs().amax(dim=1) / 127.5).clamp(min=1e-12).double()
    zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
    packed = torch.ops.quantized.linear_prepack(
        torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8),
        None if bias is None else bias.detach().float())
    return lambda x: torch.ops.quantized.linear_dynamic(x, packed, True)


class Int8Linears:
    """(QKV, attention output, feed-forward in, feed-forward out) of every encoder layer, packed once."""

    def __init__(self, encoder: nn.TransformerEncoder):
        self.layers = [
            (int8_linear(layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias),
             int8_linear(layer.self_attn.out_proj.weight, layer.self_attn.out_proj.bias),
             int8_linear(layer.linear1.weight, layer.linear1.bias),
             int8_linear(layer.linear2.weight, layer.linear2.bias))
            for layer in encoder.layers
        ]


def encoder_forward(encoder: nn.TransformerEncoder, x: Tensor, padding_mask: Tensor | None,
                    linears: Int8Linears, rows: Tensor | None = None) -> Tensor:
    """x (B, S, D) float32, padding_mask (B, S) True = pad or None → (B, S, D), or (N, D) at `rows` (B, S) only
    (row-major); eval-mode math, no autograd."""
    batch, length, dim = x.shape
    heads = encoder.layers[0].self_attn.num_heads
    attend = None if padding_mask is None else ~padding_mask[:, None, None, :]
    h = x.reshape(batch * length, dim)
    last = len(encoder.layers) - 1
    for index, (layer, (qkv, out, ff_in, ff_out)) in enumerate(zip(encoder.layers, linears.layers)):
        q, k, v = qkv(h).view(batch, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attend).transpose(1, 2).reshape(-1, dim)
        if index == last and rows is not None:
            h, attended = h[rows.reshape(-1)], attended[rows.reshape(-1)]
        h = F.layer_norm(h + out(attended), (dim,), layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
        h = F.layer_norm(h + ff_out(F.gelu(ff_in(h))), (dim,), layer.norm2.weight, layer.norm2.bias,
                         layer.norm2.eps)
    return h if rows is not None else h.view(batch, length, dim)


def fused_encoder_rows(encoder: nn.TransformerEncoder, x: Tensor, padding_mask: Tensor | None,
                       rows: Tensor) -> Tensor:
    """PyTorch's fused inference forward of x (B, S, D), padding_mask (B, S) True = pad or None, whose last layer
    stops at `rows` (B, S) → (N, D), row-major: the same kernels in the same order as `nn.TransformerEncoder`.

    The layers before the last and the last layer's attention (with its output projection) run as the encoder
    runs them; then x + attention, LayerNorm, feed-forward, + residual and LayerNorm, as in PyTorch's fused layer
    (`_transformer_encoder_layer_fwd`, post-LN), on the selected rows only. Eval mode, no autograd.
    """
    mask = F._canonical_mask(mask=padding_mask, mask_name="src_key_padding_mask", other_type=None,
                             other_name="mask", target_type=x.dtype)
    *first, last = encoder.layers
    for layer in first:
        x = layer(x, src_key_padding_mask=mask)
    attention = last.self_attn
    attended = torch._native_multi_head_attention(
        x, x, x, attention.embed_dim, attention.num_heads, attention.in_proj_weight, attention.in_proj_bias,
        attention.out_proj.weight, attention.out_proj.bias, mask, False, True, None if mask is None else 1)[0]
    dim = x.shape[-1]
    h = F.layer_norm(attended[rows] + x[rows], (dim,), last.norm1.weight, last.norm1.bias, last.norm1.eps)
    feed_forward = F.linear(F.gelu(F.linear(h, last.linear1.weight, last.linear1.bias)), last.linear2.weight,
                            last.linear2.bias)
    return F.layer_norm(feed_forward + h, (dim,), last.norm2.weight, last.norm2.bias, last.norm2.eps)
