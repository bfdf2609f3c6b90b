"""SeRpEnt (Rando et al., arXiv 2501.11729): selective resampling of a sequence by its learned clock, per-rate SSMs.

A drop-in sequence mixer (batch, length, d_model) -> (batch, length, d_model):

    x ─► information a_l ∈ (0, 1) ─┬─ κ=0.5: clock → grid crossings → K-window Linear → Mamba → restore ─┐
                                   ├─ κ=0.3: ...                                                        ├─ concat → Linear ─► + x
                                   └─ κ=0.2: ...                                                        ┘

What the paper shows (Fig. 2/3): one Δ per element, clock t_l = Σ_{i≤l} Δ_i, a uniform grid in that clock, the element
where t crosses each grid point is selected, a Linear maps it with its K neighbours to one compressed element, each
compression rate κ has its own SSM, outputs are restored to length L and merged with a skip connection.

Reconstructed choices (the paper's equations were not available; see shared/reference/serpent_ssm.md §2, §6):

* Information head: a_l = σ(w·x_l + b), one scalar per token shared by all branches (bias starts at 0).
* Clock steps. Bidirectional: Δ_l = κ + (1 − κ)·a_l ∈ [κ, 1], then the clock is renormalised so that exactly
  M = ⌈κ·n⌉ grid points fall in the n real tokens: t_l = M·cumsum(Δ)_l / ΣΔ. Causal: renormalising by ΣΔ would look
  ahead, so the raw clock t_l = cumsum(Δ)_l is used with Δ_l = κ·(0.5 + a_l) ∈ [κ/2, 3κ/2] (≈ κ·n crossings at
  initialisation, between ⌊κn/2⌋ and ⌊3κn/2⌋ in general); `slot_count` pads every row to ⌈1.5·κ·L⌉ slots.
  Padded tokens get Δ = 0, so they never own a grid point.
* Selection: slot k takes the first element with t_l ≥ k (hard, no gradient through the index).
* Aggregation window: the selected element and its K − 1 predecessors (causal, as in Fig. 2) or a centred window
  (bidirectional). Every window member j is gated by its time difference to the slot, d = τ_k − t_j, expanded in
  Gaussian radial basis functions: c_k = Linear_{K·D→D}(concat_j [(1 + G φ(d_kj)) ⊙ x_j]). The gate is the gradient
  path into Δ (t_j depends smoothly on every Δ_i, i ≤ j). RBF centres: n_basis points evenly spaced on [−K, K],
  width = their spacing.
* Fixed shapes: every row has the same slot count; slots beyond a row's grid points are flagged invalid and are
  treated as padding by the branch Mamba (they sit at the end, so they affect nothing).
* Never-merge positions (`keep_mask`): each kept token gets an extra slot of its own (slot time = its clock time,
  window = its own window), added to the grid slots and sorted into time order; the slot count grows by the largest
  number of kept tokens in the batch.
* Restore: bidirectional — each position reads the slot whose time is nearest its clock time; causal — each position
  reads the latest slot whose window ends at or before it (positions before the first crossing read nothing).
* Merge: concatenation of the restored branches → Linear, plus the identity skip (outputs at padded positions are the
  input there). The native path applies each branch's slice of that Linear before its restore (same function).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from safemotion.models.ssm.mamba import SCANS, Mamba, MambaConfig, check_sequence_input, drop_empty_mask, resolve_scan
from safemotion.models.ssm.scan_native import TimeGate, gather_rows_native

CAUSAL_STEP_RANGE = (0.5, 1.5)  # causal Δ_l = κ·(0.5 + a_l) lies in κ·[0.5, 1.5]


@dataclass(frozen=True)
class SeRpEntConfig:
    """Compression rates, window and branch-SSM sizes of one SeRpEnt mixer."""

    d_model: int
    kappas: tuple[float, ...] = (0.5, 0.3, 0.2)
    window: int = 3  # K: the selected element and K − 1 neighbours
    n_basis: int = 8  # Gaussian RBFs for the time-difference features
    bidirectional: bool = False
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    scan: str = "auto"  # see MambaConfig.scan
    chunk_size: int = 16

    def __post_init__(self) -> None:
        if not self.kappas or any(not 0.0 < k <= 1.0 for k in self.kappas):
            raise ValueError(f"SeRpEntConfig.kappas must be a non-empty tuple of rates in (0, 1], got {self.kappas}")
        if self.window < 1:
            raise ValueError(f"SeRpEntConfig.window must be >= 1, got {self.window}")
        if self.n_basis < 2:
            raise ValueError(f"SeRpEntConfig.n_basis must be >= 2, got {self.n_basis}")
        if self.scan not in SCANS:
            raise ValueError(f"SeRpEntConfig.scan must be one of {SCANS}, got {self.scan!r}")

    def branch_ssm(self) -> MambaConfig:
        """Config of the Mamba that mixes each compressed sequence."""
        return MambaConfig(
            d_model=self.d_model, d_state=self.d_state, expand=self.expand, d_conv=self.d_conv,
            bidirectional=self.bidirectional, scan=self.scan, chunk_size=self.chunk_size,
        )


def _ceil_rate(rate: float, count: int) -> int:
    # ⌈rate·count⌉, robust to 0.3·10 = 3.0000000000000004.
    return math.ceil(rate * count - 1e-9)


def slot_count(length: int, kappa: float, bidirectional: bool) -> int:
    """Grid slots per row: ⌈κL⌉ (bidirectional, renormalised clock) or ⌈1.5κL⌉ (causal, raw clock)."""
    rate = kappa if bidirectional else kappa * CAUSAL_STEP_RANGE[1]
    return max(1, _ceil_rate(rate, length))


def clock_steps(information: Tensor, kappa: float, bidirectional: bool) -> Tensor:
    """Δ per token from information a ∈ (0, 1): κ + (1 − κ)·a (bidirectional) or κ·(0.5 + a) (causal)."""
    if bidirectional:
        return kappa + (1.0 - kappa) * information
    low, high = CAUSAL_STEP_RANGE
    return kappa * (low + (high - low) * information)


@dataclass
class ResamplingPlan:
    """Where each compressed slot comes from and where each position reads back from, for one rate."""

    clock: Tensor  # (B, L) t_l, differentiable in Δ
    index: Tensor  # (B, S) selected element per slot (time-sorted); L for invalid slots
    time: Tensor  # (B, S) slot time τ (grid point, or the clock time of a kept token)
    valid: Tensor  # (B, S) bool
    window_index: Tensor  # (B, S, K) window members, clamped into [0, L)
    window_valid: Tensor  # (B, S, K) bool: member exists, is not padding, slot is valid
    restore_index: Tensor  # (B, L) slot read by each position
    restore_valid: Tensor  # (B, L) bool: the position reads a slot


def plan_resampling(
    steps: Tensor,
    kappa: float,
    window: int,
    bidirectional: bool,
    padding_mask: Tensor | None = None,
    keep_mask: Tensor | None = None,
) -> ResamplingPlan:
    """Clock, grid-crossing selection, windows and restore map for clock steps Δ of shape (B, L)."""
    batch, length = steps.shape
    device = steps.device
    real = torch.ones_like(steps, dtype=torch.bool) if padding_mask is None else ~padding_mask
    positions = torch.arange(length, device=device)
    steps = torch.where(real, steps, torch.zeros_like(steps))
    cumulative = steps.cumsum(dim=1)

    n_slots = slot_count(length, kappa, bidirectional)
    grid = torch.arange(1, n_slots + 1, device=device, dtype=steps.dtype).expand(batch, n_slots)
    if bidirectional:
        n_grid = torch.ceil(real.sum(dim=1).double() * kappa - 1e-9).to(steps.dtype)
        clock = cumulative * (n_grid / cumulative[:, -1].clamp_min(1e-12)).unsqueeze(1)
        index = torch.searchsorted(clock.detach().contiguous(), grid.contiguous())
        # Round-off can leave the last real clock value a hair under M; that grid point belongs to the last real token.
        last_real = torch.where(real, positions, 0).amax(dim=1, keepdim=True)
        valid = grid <= n_grid.unsqueeze(1)
        index = torch.minimum(index, last_real)
    else:
        clock = cumulative
        index = torch.searchsorted(clock.detach().contiguous(), grid.contiguous())
        valid = index < length
    time = grid

    n_keep = 0 if keep_mask is None else int((keep_mask & real).sum(dim=1).max())
    if n_keep:
        kept = torch.where(keep_mask & real, positions, length).sort(dim=1).values[:, :n_keep]
        kept_valid = kept < length
        index = torch.cat([index, kept], dim=1)
        time = torch.cat([time, clock.gather(1, kept.clamp(max=length - 1))], dim=1)
        valid = torch.cat([valid, kept_valid], dim=1)

    index = torch.where(valid, index, length)
    if n_keep:  # without kept slots the grid slots are already in time order, the valid ones first
        order = torch.where(valid, time.detach(), math.inf).sort(dim=1, stable=True).indices
        index, time, valid = index.gather(1, order), time.gather(1, order), valid.gather(1, order)

    if bidirectional:
        offsets = torch.arange(-((window - 1) // 2), window // 2 + 1, device=device)
    else:
        offsets = torch.arange(-(window - 1), 1, device=device)
    members = index.unsqueeze(-1) + offsets
    window_index = members.clamp(0, length - 1)
    window_valid = (
        valid.unsqueeze(-1)
        & (members >= 0)
        & (members < length)
        & real.gather(1, window_index.flatten(1)).view_as(members)
    )

    if bidirectional:
        restore_index, restore_valid = _restore_nearest(clock.detach(), time.detach(), valid)
    else:
        restore_index = torch.searchsorted(index.contiguous(), positions.expand(batch, length).contiguous(), right=True) - 1
        restore_valid = restore_index >= 0
        restore_index = restore_index.clamp(min=0)
    return ResamplingPlan(clock, index, time, valid, window_index, window_valid, restore_index, restore_valid & real)


def _restore_nearest(clock: Tensor, time: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """For each position, the valid slot whose (sorted) time is nearest the position's clock time."""
    n_slots = time.shape[1]
    key = torch.where(valid, time, math.inf).contiguous()
    right = torch.searchsorted(key, clock.contiguous())
    left = (right - 1).clamp(min=0)
    right_in = right.clamp(max=n_slots - 1)
    inf = torch.full_like(clock, math.inf)
    to_right = torch.where(right < n_slots, key.gather(1, right_in) - clock, inf)
    to_left = torch.where(right > 0, clock - key.gather(1, left), inf)
    index = torch.where(to_left <= to_right, left, right_in)
    return index, torch.minimum(to_left, to_right) < math.inf


class ResamplingBranch(nn.Module):
    """One compression rate κ: resample by the clock, mix the compressed sequence with a Mamba, restore to length L."""

    def __init__(self, config: SeRpEntConfig, kappa: float) -> None:
        super().__init__()
        self.config = config
        self.kappa = kappa
        d, k = config.d_model, config.window
        self.register_buffer("centres", torch.linspace(-k, k, config.n_basis), persistent=False)
        self.width = 2.0 * k / (config.n_basis - 1)
        self.time_gate = nn.Linear(config.n_basis, d)
        self.aggregate = nn.Linear(k * d, d)
        self.ssm = Mamba(config.branch_ssm())

    def forward(
        self,
        x: Tensor,
        information: Tensor,
        padding_mask: Tensor | None = None,
        keep_mask: Tensor | None = None,
        project: Tensor | None = None,
    ) -> Tensor:
        """x (B, L, D), information (B, L) -> restored branch output (B, L, D); with `project` (D, D), the branch
        output times project.T (applied to the compressed rows, before the restore: a row gather commutes with it)."""
        batch, length, d = x.shape
        steps = clock_steps(information, self.kappa, self.config.bidirectional)
        plan = plan_resampling(steps, self.kappa, self.config.window, self.config.bidirectional, padding_mask, keep_mask)
        n_slots, k = plan.window_index.shape[1:]
        flat = plan.window_index.flatten(1)
        member_time = plan.clock.gather(1, flat).view(batch, n_slots, k)
        dt = plan.time.unsqueeze(-1) - member_time
        # Native: one C pass each for gather → time gate → mask and for the restore (one each back); index −1 = zero row.
        native = resolve_scan(self.config.scan, x) == "native"
        if native:
            members = torch.where(plan.window_valid, plan.window_index, -1).flatten(1)
            gate = TimeGate(dt.flatten(1), self.centres, self.width, self.time_gate.weight, self.time_gate.bias)
            gated = gather_rows_native(x, members, gate)
        else:
            basis = torch.exp(-0.5 * ((dt.unsqueeze(-1) - self.centres) / self.width) ** 2)
            members = x.gather(1, flat.unsqueeze(-1).expand(-1, -1, d)).view(batch, n_slots, k, d)
            gated = (1.0 + self.time_gate(basis)) * members
            gated = torch.where(plan.window_valid.unsqueeze(-1), gated, torch.zeros_like(gated))
        mixed = self.ssm(self.aggregate(gated.view(batch, n_slots, k * d)), padding_mask=~plan.valid)
        if project is not None:
            mixed = F.linear(mixed, project)
        if native:
            return gather_rows_native(mixed, torch.where(plan.restore_valid, plan.restore_index, -1))
        restored = mixed.gather(1, plan.restore_index.unsqueeze(-1).expand(-1, -1, d))
        return torch.where(plan.restore_valid.unsqueeze(-1), restored, torch.zeros_like(restored))


class SeRpEnt(nn.Module):
    """SeRpEnt mixer (B, L, D) -> (B, L, D): x + Linear(concat of the restored κ-branches)."""

    def __init__(self, config: SeRpEntConfig) -> None:
        super().__init__()
        self.config = config
        self.information_head = nn.Linear(config.d_model, 1)
        nn.init.zeros_(self.information_head.bias)
        self.branches = nn.ModuleList(ResamplingBranch(config, kappa) for kappa in config.kappas)
        self.merge = nn.Linear(len(config.kappas) * config.d_model, config.d_model)

    def information(self, x: Tensor) -> Tensor:
        """Per-token information a ∈ (0, 1), shape (B, L); the branch clocks are affine in it."""
        return torch.sigmoid(self.information_head(x)).squeeze(-1)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None, keep_mask: Tensor | None = None) -> Tensor:
        """padding_mask: True at padding; keep_mask: True at tokens that must own a compressed slot."""
        check_sequence_input(x, self.config.d_model, padding_mask, "SeRpEnt")
        if x.shape[1] == 0:
            raise ValueError("SeRpEnt: input has length 0; pass at least one position")
        if keep_mask is not None and (keep_mask.dtype != torch.bool or keep_mask.shape != x.shape[:2]):
            raise ValueError(
                f"SeRpEnt: keep_mask must be bool of shape {tuple(x.shape[:2])}, got {keep_mask.dtype} {tuple(keep_mask.shape)}"
            )
        native = resolve_scan(self.config.scan, x) == "native"
        padding_mask = drop_empty_mask(padding_mask, native)
        information = self.information(x)
        if native:
            # merge(cat(restored)) = Σ_b restore_b(mixed_b) W_b^T + bias with W_b^T applied to the compressed rows:
            # Σκ ≈ 1 of L rows at width D instead of L rows at width len(κ)·D (3× fewer flops in the merge at κ = .5/.3/.2).
            weights = self.merge.weight.split(self.config.d_model, dim=1)
            mixed = self.merge.bias
            for branch, weight in zip(self.branches, weights):
                mixed = mixed + branch(x, information, padding_mask, keep_mask, weight)
        else:
            restored = [branch(x, information, padding_mask, keep_mask) for branch in self.branches]
            mixed = self.merge(torch.cat(restored, dim=-1))
        if padding_mask is not None:
            mixed = mixed.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        return x + mixed
