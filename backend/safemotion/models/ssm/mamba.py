"""Mamba mixer (Gu & Dao): in_proj → depthwise causal conv → SiLU → selective SSM → × SiLU(z) → out_proj.

A drop-in sequence mixer (batch, length, d_model) -> (batch, length, d_model). `bidirectional=True` adds a second
selective SSM (own conv, x_proj, dt_proj, A, D; shared in_proj/out_proj) that reads the sequence reversed; the two
directions are summed before the gate. The residual connection and normalisation belong to the caller's block.

Padding: positions flagged in `padding_mask` are zeroed before the convolution and get Δ = 0, so Ā = 1 and B̄ = 0 and
the state passes them unchanged in both directions; their outputs are zero. Outputs at real positions therefore equal
those of the unpadded sequence whenever the padding sits at the start or the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from safemotion.models.ssm.scan import selective_scan_chunked, selective_scan_sequential
from safemotion.models.ssm.scan_native import (
    causal_conv_silu_native,
    gate_silu_native,
    native_scan_supports,
    selective_scan_native,
)

SCANS = ("auto", "chunked", "native", "sequential")


def resolve_scan(scan: str, *tensors: Tensor) -> str:
    """The scan that the setting `scan` (one of SCANS) runs on these tensors: "auto" is chunked on CUDA, native where
    the C kernels take them (float32 CPU, a compiler), else sequential; the other settings are taken as they are."""
    if scan != "auto":
        return scan
    if any(t.is_cuda for t in tensors):
        return "chunked"
    return "native" if native_scan_supports(*tensors) else "sequential"


@dataclass(frozen=True)
class MambaConfig:
    """Sizes and initialisation of one Mamba mixer (defaults follow `mamba_ssm`)."""

    d_model: int
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_rank: int | None = None  # None: ceil(d_model / 16)
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    bidirectional: bool = False
    # "chunked" (parallel prefix scan), "native" (fused C kernel, float32 CPU), "sequential" (PyTorch loop) or "auto":
    # chunked on CUDA, native on CPU where it builds, else the loop (bench/ssm_scan.py). Numerically equivalent.
    scan: str = "auto"
    chunk_size: int = 16

    def __post_init__(self) -> None:
        for name in ("d_model", "d_state", "expand", "d_conv"):
            if getattr(self, name) < 1:
                raise ValueError(f"MambaConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.scan not in SCANS:
            raise ValueError(f"MambaConfig.scan must be one of {SCANS}, got {self.scan!r}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"MambaConfig needs 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")

    @property
    def d_inner(self) -> int:
        """Width of the SSM channels (expand · d_model)."""
        return self.expand * self.d_model

    @property
    def rank(self) -> int:
        """Rank of the low-rank Δ projection."""
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.d_model / 16)


def drop_empty_mask(padding_mask: Tensor | None, native: bool) -> Tensor | None:
    """None for a mask without padding on the native path (which then skips every masking op), else the mask."""
    if padding_mask is None or not native or bool(padding_mask.any()):
        return padding_mask
    return None


def check_sequence_input(x: Tensor, d_model: int, padding_mask: Tensor | None, where: str) -> None:
    """Raise a clear error unless x is (batch, length, d_model) and padding_mask is a matching bool (batch, length)."""
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"{where}: expected input (batch, length, {d_model}), got {tuple(x.shape)}")
    if padding_mask is not None and (padding_mask.dtype != torch.bool or padding_mask.shape != x.shape[:2]):
        raise ValueError(
            f"{where}: padding_mask must be bool of shape {tuple(x.shape[:2])} (True = padding), "
            f"got {padding_mask.dtype} {tuple(padding_mask.shape)}"
        )


class SelectiveSSM(nn.Module):
    """One scan direction: causal depthwise conv, SiLU, input-dependent Δ, B, C, and the selective scan."""

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        self.config = config
        d_inner, n, rank = config.d_inner, config.d_state, config.rank
        self.conv = nn.Conv1d(d_inner, d_inner, config.d_conv, groups=d_inner, padding=config.d_conv - 1)
        self.x_proj = nn.Linear(d_inner, rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(rank, d_inner)
        # S4D-Real: A = -(1, 2, ..., N) for every channel, stored as log so that A stays negative.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self._init_dt()

    @torch.no_grad()
    def _init_dt(self) -> None:
        """Δ starts log-uniform in [dt_min, dt_max] (floored): dt bias = softplus⁻¹ of that sample."""
        c = self.config
        nn.init.uniform_(self.dt_proj.weight, -c.rank**-0.5, c.rank**-0.5)
        log_dt = torch.rand(c.d_inner) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min)
        dt = torch.exp(log_dt).clamp(min=c.dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, u: Tensor, padding_mask: Tensor | None = None, reverse: bool = False) -> Tensor:
        """(batch, length, d_inner) -> (batch, length, d_inner), causal along the length (anti-causal if reverse: the
        SSM reads the sequence from its end, as if run on u.flip(1) with the result flipped back)."""
        scan = resolve_scan(self.config.scan, u, self.A_log)
        if scan == "native":
            return self._forward_native(u, padding_mask, reverse)
        if reverse:
            flipped_mask = None if padding_mask is None else padding_mask.flip(1)
            return self.forward(u.flip(1), flipped_mask).flip(1)
        length = u.shape[1]
        if padding_mask is not None:
            u = u.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        u = F.silu(self.conv(u.transpose(1, 2))[..., :length].transpose(1, 2).contiguous())
        dt_low, B, C = self.x_proj(u).split([self.config.rank, self.config.d_state, self.config.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt_low))
        if padding_mask is not None:
            delta = delta.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        A = -torch.exp(self.A_log)
        if scan == "chunked":
            return selective_scan_chunked(u, delta, A, B, C, self.D, self.config.chunk_size)
        return selective_scan_sequential(u, delta, A, B, C, self.D)

    def _forward_native(self, u: Tensor, padding_mask: Tensor | None, reverse: bool) -> Tensor:
        """The same function through the fused C kernels: conv + SiLU in one pass, dt_proj and softplus inside the scan,
        the reverse direction read in place (no flipped copies)."""
        if padding_mask is not None:
            u = u.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        u = causal_conv_silu_native(u, self.conv.weight, self.conv.bias, reverse)
        dt_low, B, C = self.x_proj(u).split([self.config.rank, self.config.d_state, self.config.d_state], dim=-1)
        A = -torch.exp(self.A_log)
        if padding_mask is None:  # dt_proj and softplus inside the scan
            dt_proj = (self.dt_proj.weight, self.dt_proj.bias)
            return selective_scan_native(u, dt_low, A, B, C, self.D, delta_softplus=True, reverse=reverse, delta_proj=dt_proj)
        # Padded steps need Δ = 0 exactly: softplus first, then mask.
        delta = F.softplus(self.dt_proj(dt_low)).masked_fill(padding_mask.unsqueeze(-1), 0.0)
        return selective_scan_native(u, delta, A, B, C, self.D, reverse=reverse)


class Mamba(nn.Module):
    """Mamba mixer (batch, length, d_model) -> (batch, length, d_model); causal unless config.bidirectional."""

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        self.config = config
        self.in_proj = nn.Linear(config.d_model, 2 * config.d_inner, bias=False)
        self.forward_ssm = SelectiveSSM(config)
        self.backward_ssm = SelectiveSSM(config) if config.bidirectional else None
        self.out_proj = nn.Linear(config.d_inner, config.d_model, bias=False)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Mix along the length; padding_mask (batch, length) is True at padded positions, whose outputs are 0."""
        check_sequence_input(x, self.config.d_model, padding_mask, "Mamba")
        native = resolve_scan(self.config.scan, x) == "native"
        padding_mask = drop_empty_mask(padding_mask, native)
        u, z = self.in_proj(x).chunk(2, dim=-1)
        y = self.forward_ssm(u, padding_mask)
        y_back = None if self.backward_ssm is None else self.backward_ssm(u, padding_mask, reverse=True)
        if native:
            gated = gate_silu_native(y, y_back, z)  # the sum of the directions and the gate in one pass
        else:
            gated = (y if y_back is None else y + y_back) * F.silu(z)
        out = self.out_proj(gated)
        if padding_mask is not None:
            out = out.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        return out
