"""Mamba's selective scan h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t, y_t = <C_t, h_t> + D u_t, in pure PyTorch.

Two implementations of the same function, in (batch, length, channels) layout:

* `selective_scan_sequential` — a plain autograd loop over time, the oracle (mirrors `selective_scan_ref` of
  state-spaces/mamba).
* `selective_scan_chunked` — the parallel form: the linear recurrence is solved by a Hillis–Steele prefix scan
  inside chunks plus a recursive scan over the chunk summaries (O(log L) depth), with an analytic backward (the adjoint
  of a linear recurrence is the same recurrence run in reverse), so autograd keeps only the decays and the states.
  Only products of decay factors in (0, 1] are formed, so nothing over- or underflows for long sequences (unlike a
  global exp(cumsum(log a))).

Which is faster depends on the hardware: the chunked scan needs few, large kernels (what a GPU wants); on a small CPU
the loop over cache-sized (batch, channels, state) slices is usually faster for batch > 1 because the chunked scan
streams (batch, length, channels, state) tensors through memory several times. Both agree to float32 round-off.
On CPU both lose to the fused C kernel in `scan_native.py` (same contract), which `Mamba(scan="auto")` uses there.

Discretisation (as released `mamba_ssm`): Ā = exp(Δ A) (zero-order hold) and B̄ = Δ B (the Euler simplification of
the exact ZOH input matrix (ΔA)⁻¹(exp(ΔA) − 1)ΔB).
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_scan_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None) -> None:
    """Raise a clear error unless the scan inputs have matching (batch, length, channels / state) shapes."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, length, channels), got shape {tuple(u.shape)}")
    batch, length, channels = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta shape {tuple(delta.shape)} must equal u shape {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f"selective_scan: A must be (channels={channels}, state), got {tuple(A.shape)}")
    expected = (batch, length, A.shape[1])
    for name, tensor in (("B", B), ("C", C)):
        if tuple(tensor.shape) != expected:
            raise ValueError(f"selective_scan: {name} must be (batch, length, state)={expected}, got {tuple(tensor.shape)}")
    if D is not None and tuple(D.shape) != (channels,):
        raise ValueError(f"selective_scan: D must be (channels={channels},), got {tuple(D.shape)}")


def selective_scan_sequential(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None) -> Tensor:
    """Reference scan, one time step at a time: u, delta (b, l, d); A (d, n); B, C (b, l, n); D (d,) -> y (b, l, d)."""
    check_scan_shapes(u, delta, A, B, C, D)
    batch, length, channels = u.shape
    h = u.new_zeros(batch, channels, A.shape[1])
    outputs = []
    # unbind, not u[:, t]: the backward of unbind is one stack, that of L selects is L full-size zero-filled adds.
    for u_t, delta_t, B_t, C_t in zip(u.unbind(1), delta.unbind(1), B.unbind(1), C.unbind(1)):
        decay = torch.exp(delta_t.unsqueeze(-1) * A)  # (b, d, n)
        write = (delta_t * u_t).unsqueeze(-1) * B_t.unsqueeze(1)
        h = decay * h + write
        outputs.append(torch.einsum("bdn,bn->bd", h, C_t))
    y = torch.stack(outputs, dim=1) if outputs else u.new_zeros(batch, 0, channels)
    return y if D is None else y + u * D


def selective_scan_chunked(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None, chunk_size: int = 16
) -> Tensor:
    """Parallel scan with the same contract as `selective_scan_sequential` (agrees to float32 round-off)."""
    check_scan_shapes(u, delta, A, B, C, D)
    decay = torch.exp(delta.unsqueeze(-1) * A)  # (b, l, d, n)
    write = (delta * u).unsqueeze(-1) * B.unsqueeze(2)
    h = linear_recurrence(decay, write, chunk_size)
    y = torch.einsum("bldn,bln->bld", h, C)
    return y if D is None else y + u * D


def linear_recurrence(a: Tensor, b: Tensor, chunk_size: int = 16) -> Tensor:
    """All states of h_t = a_t * h_{t-1} + b_t (h_{-1} = 0) along dim 1; a, b of one shape (batch, length, ...)."""
    if a.shape != b.shape or a.dim() < 2:
        raise ValueError(f"linear_recurrence: a {tuple(a.shape)} and b {tuple(b.shape)} must share one shape (batch, length, ...)")
    if chunk_size < 2:
        raise ValueError(f"linear_recurrence: chunk_size must be >= 2, got {chunk_size}")
    return _LinearRecurrence.apply(a, b, chunk_size)


class _LinearRecurrence(torch.autograd.Function):
    """h = scan(a, b) with the adjoint g_t = ∂L/∂h_t + a_{t+1} g_{t+1}, ∂L/∂b_t = g_t, ∂L/∂a_t = g_t h_{t-1}."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, chunk_size: int) -> Tensor:  # type: ignore[override]
        h = _scan_chunked(a, b, chunk_size)
        ctx.save_for_backward(a, h)
        ctx.chunk_size = chunk_size
        return h

    @staticmethod
    def backward(ctx, grad_h: Tensor) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
        a, h = ctx.saved_tensors
        a_next = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], dim=1)
        g = _scan_chunked(a_next.flip(1), grad_h.flip(1), ctx.chunk_size).flip(1)
        h_prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)
        return g * h_prev, g, None


@torch.no_grad()
def _scan_chunked(a: Tensor, b: Tensor, chunk_size: int) -> Tensor:
    """Forward recurrence without autograd: prefix scans inside chunks, then the carried state across chunks."""
    batch, length = a.shape[:2]
    if length <= 1:
        return b.clone()
    chunk = min(chunk_size, length)
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    # Private contiguous copies (updated in place below); identity steps (a = 1, b = 0) pad the last chunk.
    a = torch.cat([a, a.new_ones((batch, pad) + a.shape[2:])], dim=1).contiguous()
    b = torch.cat([b, b.new_zeros((batch, pad) + b.shape[2:])], dim=1).contiguous()
    shape = (batch, n_chunks, chunk) + a.shape[2:]
    a, b = a.view(shape), b.view(shape)
    offset = 1
    while offset < chunk:  # Hillis–Steele: (a1, b1)∘(a2, b2) = (a1 a2, a2 b1 + b2)
        b[:, :, offset:] += a[:, :, offset:] * b[:, :, :-offset]
        a[:, :, offset:] = a[:, :, offset:] * a[:, :, :-offset]
        offset *= 2
    if n_chunks > 1:
        # b[:, c, -1] is chunk c's end state from a zero start; scan those to get the state entering each chunk.
        chunk_end = _scan_chunked(a[:, :, -1], b[:, :, -1], chunk_size)
        b[:, 1:] += a[:, 1:] * chunk_end[:, :-1].unsqueeze(2)
    return b.reshape((batch, n_chunks * chunk) + shape[3:])[:, :length]
