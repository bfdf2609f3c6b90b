"""Mamba selective scan and SeRpEnt: scan equivalence, causality, gradients into Δ, padding and odd shapes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from safemotion.models.ssm import (
    Mamba,
    MambaConfig,
    SeRpEnt,
    SeRpEntConfig,
    linear_recurrence,
    native_scan_available,
    plan_resampling,
    selective_scan_chunked,
    selective_scan_native,
    selective_scan_sequential,
)
from safemotion.models.ssm.scan_native import TimeGate, causal_conv_silu_native, gate_silu_native, gather_rows_native
from safemotion.models.ssm.serpent import clock_steps, slot_count

# Fig. 2 of the SeRpEnt paper: "After work I got to the movie theater and there I saw Sarah".
FIG2_STEPS = [0.1, 0.2, 0.2, 0.4, 0.2, 0.1, 0.5, 0.5, 0.1, 0.1, 0.2, 0.2, 0.4]


def scan_inputs(batch: int, length: int, channels: int, state: int, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, length, channels, generator=g, dtype=dtype)
    delta = F.softplus(torch.randn(batch, length, channels, generator=g, dtype=dtype) - 1.0)
    A = -torch.exp(torch.randn(channels, state, generator=g, dtype=dtype))
    B = torch.randn(batch, length, state, generator=g, dtype=dtype) / math.sqrt(state)
    C = torch.randn(batch, length, state, generator=g, dtype=dtype) / math.sqrt(state)
    D = torch.randn(channels, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (u, delta, A, B, C, D)]


def assert_values_and_gradients_match(ref, out, ref_leaves, out_leaves=None, names=None, tol=1e-5, grad_atol=None,
                                      grad_rtol=None):
    """out equals ref to tol (abs and rel), and so do the gradients for one random cotangent with respect to every leaf
    (None leaves skipped): of ref_leaves for both, or of out_leaves for out (a twin module's parameters, say)."""
    assert torch.allclose(out, ref, atol=tol, rtol=tol), (out - ref).abs().max()
    names = names or [str(i) for i in range(len(ref_leaves))]
    out_leaves = ref_leaves if out_leaves is None else out_leaves
    kept = [i for i, leaf in enumerate(ref_leaves) if leaf is not None]
    weight = torch.randn_like(ref)
    ref_grads = torch.autograd.grad((ref * weight).sum(), [ref_leaves[i] for i in kept])
    out_grads = torch.autograd.grad((out * weight).sum(), [out_leaves[i] for i in kept])
    atol = tol if grad_atol is None else grad_atol
    rtol = tol if grad_rtol is None else grad_rtol
    for i, a, b in zip(kept, out_grads, ref_grads):
        assert torch.allclose(a, b, atol=atol, rtol=rtol), (names[i], (a - b).abs().max())


def assert_twins_match(ref_model, out_model, ref, out, x, **tolerances):
    """Two modules with one state dict agree in value and in the gradients of the input x and every parameter."""
    names = ["x", *(name for name, _ in ref_model.named_parameters())]
    assert_values_and_gradients_match(ref, out, [x, *ref_model.parameters()], [x, *out_model.parameters()], names,
                                      **tolerances)


SCAN_NAMES = "u delta A B C D".split()


# ---------------------------------------------------------------------------------------------------------- scan


@pytest.mark.parametrize("length", [1, 2, 7, 16, 33, 100])
@pytest.mark.parametrize("chunk_size", [2, 5, 16])
def test_chunked_scan_matches_sequential_values_and_gradients(length, chunk_size):
    inputs = scan_inputs(2, length, 6, 4, seed=length * 31 + chunk_size)
    y_ref = selective_scan_sequential(*inputs)
    y_fast = selective_scan_chunked(*inputs, chunk_size=chunk_size)
    assert y_fast.shape == (2, length, 6)
    assert_values_and_gradients_match(y_ref, y_fast, inputs, names=SCAN_NAMES, grad_atol=1e-4, grad_rtol=1e-4)


def test_sequential_scan_matches_a_hand_unrolled_two_step_recurrence():
    u, delta, A, B, C, D = [t.detach() for t in scan_inputs(1, 2, 1, 1, seed=3, dtype=torch.float64)]
    a0, a1 = torch.exp(delta[0, 0, 0] * A[0, 0]), torch.exp(delta[0, 1, 0] * A[0, 0])
    h0 = delta[0, 0, 0] * B[0, 0, 0] * u[0, 0, 0]
    h1 = a1 * h0 + delta[0, 1, 0] * B[0, 1, 0] * u[0, 1, 0]
    expected = torch.stack([C[0, 0, 0] * h0 + D[0] * u[0, 0, 0], C[0, 1, 0] * h1 + D[0] * u[0, 1, 0]])
    assert a0 > 0  # decay of the (unused) first step is a valid ZOH factor
    assert torch.allclose(selective_scan_sequential(u, delta, A, B, C, D)[0, :, 0], expected)


def test_linear_recurrence_gradcheck_and_long_sequence_stability():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 11, 3, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(2, 11, 3, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: linear_recurrence(a, b, 4), (a, b))
    # Non-contiguous input (time is not the outer stride) against a plain loop.
    a_t, b_t = a.detach().transpose(1, 2).contiguous().transpose(1, 2), b.detach()
    h, expected = torch.zeros(2, 3, dtype=torch.float64), []
    for t in range(11):
        h = a_t[:, t] * h + b_t[:, t]
        expected.append(h)
    assert torch.allclose(linear_recurrence(a_t, b_t, 4), torch.stack(expected, 1))
    # Decays near 0 over 5000 steps: a global exp(cumsum(log a)) would underflow, the chunked products do not.
    a_long = torch.full((1, 5000, 1), 1e-3)
    b_long = torch.ones(1, 5000, 1)
    h = linear_recurrence(a_long, b_long, 16)
    assert torch.isfinite(h).all()
    assert torch.allclose(h[0, -1, 0], torch.tensor(1.0 / (1.0 - 1e-3)), rtol=1e-6)


def test_scan_rejects_mismatched_shapes():
    u, delta, A, B, C, D = [t.detach() for t in scan_inputs(1, 4, 3, 2, seed=0)]
    with pytest.raises(ValueError, match="B must be"):
        selective_scan_chunked(u, delta, A, B[:, :3], C, D)
    with pytest.raises(ValueError, match="A must be"):
        selective_scan_sequential(u, delta, A.T, B, C, D)


# ---------------------------------------------------------------------------------------------------------- Mamba


def test_mamba_standard_initialisation():
    torch.manual_seed(0)
    config = MambaConfig(d_model=40)
    ssm = Mamba(config).forward_ssm
    assert config.rank == 3 and config.d_inner == 80
    assert torch.allclose(-torch.exp(ssm.A_log), -torch.arange(1, 17, dtype=torch.float32).repeat(80, 1), rtol=1e-6)
    assert torch.equal(ssm.D, torch.ones(80))
    dt = F.softplus(ssm.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    assert ssm.conv.groups == 80 and ssm.conv.kernel_size == (4,)


def _twin(config: MambaConfig, **changes) -> tuple[Mamba, Mamba]:
    first = Mamba(config)
    second = Mamba(MambaConfig(**{**config.__dict__, **changes}))
    second.load_state_dict(first.state_dict())
    return first, second


@pytest.mark.parametrize("bidirectional", [False, True])
def test_mamba_chunked_and_sequential_modules_agree(bidirectional):
    torch.manual_seed(1)
    seq, fast = _twin(MambaConfig(d_model=12, bidirectional=bidirectional, scan="sequential"), scan="chunked", chunk_size=4)
    x = torch.randn(3, 19, 12)
    assert torch.allclose(seq(x), fast(x), atol=1e-5, rtol=1e-5)


def test_mamba_causal_never_looks_ahead_and_bidirectional_does():
    torch.manual_seed(2)
    causal = Mamba(MambaConfig(d_model=8))
    bidirectional = Mamba(MambaConfig(d_model=8, bidirectional=True))
    x = torch.randn(2, 15, 8)
    for cut in (1, 6, 14):
        changed = x.clone()
        changed[:, cut:] = torch.randn(2, 15 - cut, 8)
        assert torch.equal(causal(x)[:, :cut], causal(changed)[:, :cut])
        assert not torch.allclose(causal(x)[:, cut:], causal(changed)[:, cut:])
        assert not torch.allclose(bidirectional(x)[:, :cut], bidirectional(changed)[:, :cut])


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("side", ["right", "left"])
def test_mamba_padding_matches_unpadded_runs(bidirectional, side):
    torch.manual_seed(3)
    mamba = Mamba(MambaConfig(d_model=8, bidirectional=bidirectional))
    lengths, total = [9, 4, 1], 9
    x = torch.randn(3, total, 8)
    mask = torch.ones(3, total, dtype=torch.bool)
    for row, n in enumerate(lengths):
        real = slice(0, n) if side == "right" else slice(total - n, total)
        mask[row, real] = False
    x_padded = x.masked_fill(mask.unsqueeze(-1), 7.0)  # garbage in the pads must not leak
    out = mamba(x_padded, mask)
    assert out.shape == x.shape and torch.equal(out[mask], torch.zeros_like(out[mask]))
    for row in range(3):
        real = ~mask[row]
        alone = mamba(x[row : row + 1, real])
        assert torch.allclose(out[row, real], alone[0], atol=1e-5), (row, (out[row, real] - alone[0]).abs().max())


@pytest.mark.parametrize("length", [1, 2, 7, 13])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_mamba_and_serpent_shapes_for_odd_lengths(length, bidirectional):
    torch.manual_seed(4)
    x = torch.randn(2, length, 8)
    assert Mamba(MambaConfig(d_model=8, bidirectional=bidirectional))(x).shape == (2, length, 8)
    out = SeRpEnt(SeRpEntConfig(d_model=8, bidirectional=bidirectional))(x)
    assert out.shape == (2, length, 8) and torch.isfinite(out).all()


def test_mixers_reject_bad_input():
    mamba = Mamba(MambaConfig(d_model=8))
    serpent = SeRpEnt(SeRpEntConfig(d_model=8))
    with pytest.raises(ValueError, match=r"expected input \(batch, length, 8\)"):
        mamba(torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match="padding_mask must be bool"):
        serpent(torch.randn(2, 5, 8), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="keep_mask must be bool"):
        serpent(torch.randn(2, 5, 8), keep_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="kappas"):
        SeRpEntConfig(d_model=8, kappas=(0.5, 1.5))
    with pytest.raises(ValueError, match="scan"):
        MambaConfig(d_model=8, scan="fft")


# ---------------------------------------------------------------------------------------------------------- SeRpEnt resampling


def test_figure2_causal_selection_windows_and_restore():
    plan = plan_resampling(torch.tensor([FIG2_STEPS]), kappa=0.2, window=3, bidirectional=False)
    assert torch.allclose(plan.clock[0, [4, 7, 12]], torch.tensor([1.1, 2.2, 3.2]))
    assert plan.index.shape == (1, slot_count(13, 0.2, False)) == (1, 4)
    assert plan.index[0, plan.valid[0]].tolist() == [4, 7, 12]  # "to", "theater", "Sarah"
    assert plan.window_index[0, :3].tolist() == [[2, 3, 4], [5, 6, 7], [10, 11, 12]]  # [I got to] [the movie theater] [I saw Sarah]
    assert plan.window_valid[0, :3].all() and not plan.window_valid[0, 3].any()
    # Each position reads the latest slot whose window has ended; nothing before the first crossing.
    assert plan.restore_valid[0].tolist() == [False] * 4 + [True] * 9
    assert plan.restore_index[0, 4:].tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 2]


def test_figure2_bidirectional_clock_is_renormalised_to_ceil_kappa_n_points():
    plan = plan_resampling(torch.tensor([FIG2_STEPS]), kappa=0.2, window=3, bidirectional=True)
    assert math.isclose(plan.clock[0, -1].item(), 3.0, rel_tol=1e-6)  # ⌈0.2·13⌉ = 3 grid points
    assert plan.index[0].tolist() == [4, 7, 12] and plan.valid.all()
    assert plan.window_index[0].tolist() == [[3, 4, 5], [6, 7, 8], [11, 12, 12]]  # centred windows
    assert plan.window_valid[0].tolist() == [[True] * 3, [True] * 3, [True, True, False]]
    # Nearest slot time: t = 1.125 -> slot 1.0, t = 1.59 -> slot 2.0.
    assert plan.restore_index[0].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2]


def test_bidirectional_plan_has_exactly_ceil_kappa_n_slots_per_row_and_nearest_restore():
    g = torch.Generator().manual_seed(5)
    lengths = [37, 20, 5]
    mask = torch.arange(37).expand(3, 37) >= torch.tensor(lengths).unsqueeze(1)
    for kappa in (0.5, 0.3, 0.2):
        steps = clock_steps(torch.rand(3, 37, generator=g), kappa, bidirectional=True)
        assert steps.min() >= kappa and steps.max() <= 1.0
        plan = plan_resampling(steps, kappa, 3, True, padding_mask=mask)
        assert plan.index.shape[1] == math.ceil(kappa * 37)
        assert plan.valid.sum(1).tolist() == [math.ceil(kappa * n - 1e-9) for n in lengths]
        for row, n in enumerate(lengths):
            picked = plan.index[row, plan.valid[row]]
            assert (picked < n).all() and (picked[1:] >= picked[:-1]).all()
            times = plan.time[row, plan.valid[row]]
            nearest = (plan.clock[row, :n, None] - times).abs().argmin(dim=1)
            chosen = plan.restore_index[row, :n]
            assert torch.allclose((plan.clock[row, :n] - times[chosen]).abs(), (plan.clock[row, :n] - times[nearest]).abs())
            assert not plan.restore_valid[row, n:].any()


def test_causal_plan_crossings_follow_the_raw_clock():
    g = torch.Generator().manual_seed(6)
    for kappa in (0.5, 0.3, 0.2):
        steps = clock_steps(torch.rand(4, 50, generator=g), kappa, bidirectional=False)
        assert steps.min() >= kappa / 2 and steps.max() <= 1.5 * kappa
        plan = plan_resampling(steps, kappa, 3, False)
        assert plan.valid.sum(1).tolist() == torch.floor(plan.clock[:, -1]).long().tolist()
        assert plan.index.shape[1] == math.ceil(round(1.5 * kappa * 50, 9))
        for row in range(4):
            picked = plan.index[row, plan.valid[row]]
            before = torch.where(picked > 0, plan.clock[row, (picked - 1).clamp(min=0)], torch.zeros(()))
            k = torch.arange(1, len(picked) + 1, dtype=steps.dtype)
            assert (plan.clock[row, picked] >= k - 1e-6).all() and (before < k).all()


def test_keep_mask_gives_each_kept_token_its_own_slot():
    g = torch.Generator().manual_seed(7)
    keep = torch.zeros(2, 24, dtype=torch.bool)
    keep[0, [0, 5, 6, 23]] = True
    keep[1, [11]] = True
    for bidirectional in (False, True):
        steps = clock_steps(torch.rand(2, 24, generator=g), 0.2, bidirectional)
        base = plan_resampling(steps, 0.2, 3, bidirectional)
        plan = plan_resampling(steps, 0.2, 3, bidirectional, keep_mask=keep)
        assert plan.index.shape[1] == base.index.shape[1] + 4
        assert (plan.valid.sum(1) - base.valid.sum(1)).tolist() == [4, 1]
        for row in range(2):
            valid_idx = plan.index[row, plan.valid[row]]
            assert (valid_idx[1:] >= valid_idx[:-1]).all()  # slots stay in time order
            for position in keep[row].nonzero().flatten().tolist():
                own = plan.index[row, plan.restore_index[row, position]].item()
                assert plan.restore_valid[row, position] and own == position


# ---------------------------------------------------------------------------------------------------------- SeRpEnt module


def test_serpent_causal_never_looks_ahead():
    torch.manual_seed(8)
    model = SeRpEnt(SeRpEntConfig(d_model=8, bidirectional=False))
    keep = torch.zeros(2, 30, dtype=torch.bool)
    keep[:, 3] = True
    x = torch.randn(2, 30, 8)
    for cut in (1, 9, 20, 29):
        changed = x.clone()
        changed[:, cut:] = 3.0 * torch.randn(2, 30 - cut, 8)
        for kept in (None, keep):
            before, after = model(x, keep_mask=kept), model(changed, keep_mask=kept)
            assert torch.equal(before[:, :cut], after[:, :cut]), (cut, (before[:, :cut] - after[:, :cut]).abs().max())
            assert not torch.allclose(before[:, cut:], after[:, cut:])


def test_serpent_bidirectional_sees_the_future():
    torch.manual_seed(9)
    model = SeRpEnt(SeRpEntConfig(d_model=8, bidirectional=True))
    x = torch.randn(1, 20, 8)
    changed = x.clone()
    changed[:, 15:] = torch.randn(1, 5, 8)
    assert not torch.allclose(model(x)[:, :15], model(changed)[:, :15])


@pytest.mark.parametrize("bidirectional", [False, True])
def test_gradients_reach_delta_and_match_finite_differences(bidirectional):
    torch.manual_seed(10)
    model = SeRpEnt(SeRpEntConfig(d_model=8, bidirectional=bidirectional)).double()
    x = torch.randn(2, 17, 8, dtype=torch.float64)
    target = torch.randn(2, 17, 8, dtype=torch.float64)

    def loss() -> torch.Tensor:
        return ((model(x) - target) ** 2).mean()

    loss().backward()
    head = model.information_head
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0 and torch.isfinite(head.weight.grad).all()
    analytic = head.bias.grad.item()
    eps = 1e-6
    with torch.no_grad():
        head.bias += eps
        up = loss().item()
        head.bias -= 2 * eps
        down = loss().item()
        head.bias += eps
    numeric = (up - down) / (2 * eps)
    assert abs(analytic) > 1e-8
    assert math.isclose(analytic, numeric, rel_tol=1e-4, abs_tol=1e-9), (analytic, numeric)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("side", ["right", "left"])
def test_serpent_batch_padding_matches_unpadded_runs(bidirectional, side):
    torch.manual_seed(11)
    model = SeRpEnt(SeRpEntConfig(d_model=8, bidirectional=bidirectional))
    lengths, total = [21, 13, 2], 21
    x = torch.randn(3, total, 8)
    mask = torch.ones(3, total, dtype=torch.bool)
    for row, n in enumerate(lengths):
        mask[row, slice(0, n) if side == "right" else slice(total - n, total)] = False
    out = model(x.masked_fill(mask.unsqueeze(-1), -5.0), mask)
    assert out.shape == x.shape
    for row in range(3):
        real = ~mask[row]
        alone = model(x[row : row + 1, real])
        assert torch.allclose(out[row, real], alone[0], atol=1e-5), (row, (out[row, real] - alone[0]).abs().max())


# ---------------------------------------------------------------------------------------------------- native scan


native = pytest.mark.skipif(not native_scan_available(), reason="no C compiler for the native selective scan")


@native
@pytest.mark.parametrize("length", [1, 2, 7, 33])
@pytest.mark.parametrize("with_d", [True, False])
def test_native_scan_matches_sequential_loop_values_and_gradients(length, with_d):
    u, delta, A, B, C, D = scan_inputs(3, length, 5, 4, seed=length * 7 + with_d)
    inputs = (u, delta, A, B, C, D if with_d else None)
    y_native = selective_scan_native(*inputs)
    assert y_native.shape == (3, length, 5)
    assert_values_and_gradients_match(selective_scan_sequential(*inputs), y_native, inputs, names=SCAN_NAMES)


@native
def test_native_scan_handles_non_contiguous_inputs_and_rejects_float64():
    u, delta, A, B, C, D = [t.detach() for t in scan_inputs(2, 9, 4, 3, seed=5)]
    u_t = u.transpose(0, 1).contiguous().transpose(0, 1)  # same values, time as the outer stride
    assert not u_t.is_contiguous()
    assert torch.allclose(selective_scan_native(u_t, delta, A, B, C, D), selective_scan_sequential(u, delta, A, B, C, D), atol=1e-5)
    with pytest.raises(ValueError, match="float32 CPU"):
        selective_scan_native(u.double(), delta.double(), A.double(), B.double(), C.double(), D.double())


@native
def test_mamba_auto_scan_uses_native_kernel_on_cpu_and_matches_the_loop():
    torch.manual_seed(2)
    loop, auto = _twin(MambaConfig(d_model=8, bidirectional=True, scan="sequential"), scan="auto")
    x = torch.randn(2, 13, 8, requires_grad=True)
    mask = torch.zeros(2, 13, dtype=torch.bool)
    mask[1, 10:] = True
    assert_twins_match(loop, auto, loop(x, mask), auto(x, mask), x)


@native
@pytest.mark.parametrize("length", [1, 15, 16, 17, 40])
@pytest.mark.parametrize("delta_softplus", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_native_scan_softplus_and_reverse_match_the_loop(length, delta_softplus, reverse):
    # Lengths around the kernel's 16-step checkpoint interval; reverse = the loop on flipped inputs, flipped back.
    u, raw, A, B, C, D = scan_inputs(2, length, 6, 3, seed=length + 2 * delta_softplus + reverse)
    raw_leaf = raw.detach().sub(1.0).requires_grad_()  # raw Δ before softplus, some of it negative
    flip = (lambda t: t.flip(1)) if reverse else (lambda t: t)
    ref = flip(selective_scan_sequential(flip(u), flip(F.softplus(raw_leaf)), A, flip(B), flip(C), D))
    delta_in = raw_leaf if delta_softplus else F.softplus(raw_leaf)
    out = selective_scan_native(u, delta_in, A, B, C, D, delta_softplus=delta_softplus, reverse=reverse)
    assert_values_and_gradients_match(ref, out, [u, raw_leaf, A, B, C, D], names=SCAN_NAMES)


@native
@pytest.mark.parametrize("reverse", [False, True])
def test_native_scan_with_the_low_rank_delta_projection_matches_the_loop(reverse):
    # delta_proj: raw Δ = low @ W.T + b inside the kernel; low is a strided view, as a split of Mamba's x_proj output.
    u, _, A, B, C, D = scan_inputs(2, 35, 6, 3, seed=21 + reverse)
    g = torch.Generator().manual_seed(22)
    projected = torch.randn(2, 35, 9, generator=g, requires_grad=True)
    low = projected[..., 2:5]
    W = (torch.randn(6, 3, generator=g) * 0.5).requires_grad_()
    bias = (torch.randn(6, generator=g) - 2.0).requires_grad_()
    flip = (lambda t: t.flip(1)) if reverse else (lambda t: t)
    delta = F.softplus(low @ W.T + bias)
    ref = flip(selective_scan_sequential(flip(u), flip(delta), A, flip(B), flip(C), D))
    out = selective_scan_native(u, low, A, B, C, D, delta_softplus=True, reverse=reverse, delta_proj=(W, bias))
    assert_values_and_gradients_match(ref, out, [u, projected, W, bias, A, B, C, D], names="u projected W bias A B C D".split())
    with pytest.raises(ValueError, match="delta_proj"):
        selective_scan_native(u, low, A, B, C, D, delta_proj=(W[:, :2], bias))


@native
def test_native_scan_is_exact_enough_at_extreme_delta_and_a():
    # Δ from 1e-6 (state carried over all 200 steps) to 30 (forgets at once), A from -1e-3 to -1000: exp(Δ A) spans
    # 1 - 1e-9 .. far below float32's range. Gradients reach 1e4 and cancel, so the float32 loop itself is off the
    # float64 loop by 1e-3 there: the native gradients must be as close to float64 as the loop's (and within 1e-5 of
    # the largest entry), the values within 1e-5.
    u, _, _, B, C, D = scan_inputs(2, 200, 8, 4, seed=11)
    g = torch.Generator().manual_seed(12)
    delta = torch.exp(torch.empty(2, 200, 8).uniform_(math.log(1e-6), math.log(30.0), generator=g)).requires_grad_()
    A = -torch.exp(torch.empty(8, 4).uniform_(math.log(1e-3), math.log(1e3), generator=g)).requires_grad_()
    inputs = (u, delta, A, B, C, D)
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    weight = torch.randn(2, 200, 8)
    outputs = {"loop": selective_scan_sequential(*inputs), "native": selective_scan_native(*inputs)}
    y64 = selective_scan_sequential(*inputs64)
    assert torch.isfinite(outputs["native"]).all()
    assert torch.allclose(outputs["native"], outputs["loop"], atol=1e-5, rtol=1e-5)
    g64 = torch.autograd.grad((y64 * weight.double()).sum(), inputs64)
    grads = {name: torch.autograd.grad((y * weight).sum(), inputs) for name, y in outputs.items()}
    for name, native_g, loop_g, exact in zip("u delta A B C D".split(), grads["native"], grads["loop"], g64):
        loop_error = (loop_g.double() - exact).abs().max()
        assert (native_g.double() - exact).abs().max() <= 2 * loop_error + 1e-6 * exact.abs().max(), name
        assert (native_g - loop_g).abs().max() <= 1e-5 * loop_g.abs().max(), name
    # Raw Δ far outside softplus's range (-60: Δ ~ 1e-26; 40: Δ = 40).
    raw = torch.cat([torch.full((1, 200, 8), -60.0), torch.full((1, 200, 8), 40.0)]).requires_grad_()
    ref = selective_scan_sequential(u.detach(), F.softplus(raw), A.detach(), B.detach(), C.detach(), D.detach())
    out = selective_scan_native(u.detach(), raw, A.detach(), B.detach(), C.detach(), D.detach(), delta_softplus=True)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    (g_ref,), (g_out,) = (torch.autograd.grad((y * weight).sum(), raw) for y in (ref, out))
    assert torch.allclose(g_out, g_ref, atol=1e-5, rtol=1e-5)


@native
@pytest.mark.parametrize("length", [1, 2, 5, 20])
@pytest.mark.parametrize("reverse", [False, True])
def test_native_conv_silu_matches_the_torch_conv(length, reverse):
    torch.manual_seed(length)
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3)
    full = torch.randn(2, length, 12, requires_grad=True)
    x = full[..., :6]  # a strided view, as Mamba's chunk of in_proj
    flip = (lambda t: t.flip(1)) if reverse else (lambda t: t)
    ref = flip(F.silu(conv(flip(x).transpose(1, 2))[..., :length].transpose(1, 2)))
    out = causal_conv_silu_native(x, conv.weight, conv.bias, reverse=reverse)
    assert_values_and_gradients_match(ref, out, [full, conv.weight, conv.bias], names=["x", "weight", "bias"], tol=1e-6,
                                      grad_atol=1e-5, grad_rtol=1e-5)
    with pytest.raises(ValueError, match="weight"):
        causal_conv_silu_native(x, conv.weight[:3], conv.bias)


@native
@pytest.mark.parametrize("two_directions", [False, True])
def test_native_gate_matches_torch_silu_gate(two_directions):
    g = torch.Generator().manual_seed(31)
    y1, y2 = (torch.randn(2, 9, 13, generator=g, requires_grad=True) for _ in range(2))
    projected = (torch.randn(2, 9, 26, generator=g) * 4).requires_grad_()  # z from -12 to 12, a strided chunk
    z = projected[..., 13:]
    ref = ((y1 + y2) if two_directions else y1) * F.silu(z)
    out = gate_silu_native(y1, y2 if two_directions else None, z)
    assert_values_and_gradients_match(ref, out, [y1, y2 if two_directions else None, projected], names=["y1", "y2", "z"])
    with pytest.raises(ValueError, match="share one"):
        gate_silu_native(y1, None, z[:, :4])


@native
@pytest.mark.parametrize("bidirectional", [False, True])
def test_mamba_native_path_matches_the_loop_without_padding(bidirectional):
    # No mask and an all-False mask take the fused path (softplus inside the scan); gradients of every parameter match.
    torch.manual_seed(5)
    loop, fast = _twin(MambaConfig(d_model=8, bidirectional=bidirectional, scan="sequential"), scan="native")
    x = torch.randn(2, 21, 8, requires_grad=True)
    for mask in (None, torch.zeros(2, 21, dtype=torch.bool)):
        assert_twins_match(loop, fast, loop(x, mask), fast(x, mask), x, grad_rtol=1e-4)


def test_mamba_and_serpent_fall_back_to_the_loop_when_the_native_kernel_cannot_be_built(tmp_path, monkeypatch):
    from safemotion.models.ssm import scan_native

    monkeypatch.setenv("CC", "/bin/false")  # a "compiler" that always fails
    monkeypatch.setenv("SAFEMOTION_CACHE", str(tmp_path))
    scan_native._library.cache_clear()
    try:
        assert not native_scan_available()
        assert not list(tmp_path.rglob("*.so"))  # nothing half-built left behind
        torch.manual_seed(3)
        loop, auto = _twin(MambaConfig(d_model=8, scan="sequential"), scan="auto")
        x = torch.randn(1, 6, 8)
        assert torch.equal(auto(x), loop(x))
        serpent_loop = SeRpEnt(SeRpEntConfig(d_model=8, scan="sequential"))
        serpent_auto = SeRpEnt(SeRpEntConfig(d_model=8, scan="auto"))
        serpent_auto.load_state_dict(serpent_loop.state_dict())
        assert torch.equal(serpent_auto(x), serpent_loop(x))
    finally:
        scan_native._library.cache_clear()


@native
@pytest.mark.parametrize("with_gate", [True, False])
def test_native_gather_rows_matches_torch_gather_values_and_gradients(with_gate):
    g = torch.Generator().manual_seed(12)
    x = torch.randn(2, 7, 5, generator=g, requires_grad=True)
    index = torch.randint(-1, 7, (2, 11), generator=g)  # repeats (gradients add up) and -1 (zero rows)
    index[0, :3] = torch.tensor([-1, 4, 4])
    dt, weight, bias = [torch.randn(shape, generator=g, requires_grad=True) for shape in ((2, 11), (5, 3), (5,))]
    centres, width = torch.tensor([-1.0, 0.0, 2.0]), 0.7
    basis = torch.exp(-0.5 * ((dt.unsqueeze(-1) - centres) / width) ** 2)
    rows = x.gather(1, index.clamp(min=0).unsqueeze(-1).expand(-1, -1, 5))
    ref = torch.where((index >= 0).unsqueeze(-1), (1.0 + F.linear(basis, weight, bias)) * rows if with_gate else rows, 0.0)
    out = gather_rows_native(x, index, TimeGate(dt, centres, width, weight, bias) if with_gate else None)
    assert torch.equal(out[0, 0], torch.zeros(5))
    assert_values_and_gradients_match(ref, out, [x, dt, weight, bias] if with_gate else [x], names=["x", "dt", "weight", "bias"])
    with pytest.raises(ValueError, match="int64 index"):
        gather_rows_native(x, index.int())
    with pytest.raises(ValueError, match=r"index must lie in \[-1, 7\)"):
        gather_rows_native(x, index + 7)


@native
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("kept", [False, True])
def test_serpent_native_path_matches_the_loop_values_and_gradients(bidirectional, padded, kept):
    # The native path (C scans, fused gather/gate/restore) against the PyTorch loop path, every parameter's gradient.
    torch.manual_seed(13)
    config = SeRpEntConfig(d_model=6, bidirectional=bidirectional, scan="sequential")
    loop, fast = SeRpEnt(config), SeRpEnt(SeRpEntConfig(**{**config.__dict__, "scan": "native"}))
    fast.load_state_dict(loop.state_dict())
    x = torch.randn(3, 23, 6, requires_grad=True)
    mask = torch.zeros(3, 23, dtype=torch.bool)
    if padded:
        mask[0, 17:] = True
        mask[2, :5] = True
    keep = (torch.rand(3, 23) < 0.2) if kept else None
    assert_twins_match(loop, fast, loop(x, mask if padded else None, keep), fast(x, mask if padded else None, keep), x)
