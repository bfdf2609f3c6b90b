"""A fused CPU selective scan: a small C kernel (built with the system C compiler on first use) behind an autograd Function.

Same contract and numbers as `selective_scan_sequential` (float32, to round-off), but fused: for every (batch, step)
the state of all channels (n × d floats, channels innermost so the loops vectorise over d) stays in cache and
exp(Δ A), Δ B u and <C, h> are computed in registers (expf vectorised). Nothing of shape (batch, length, channels,
state) is kept between the passes: as in the mamba CUDA kernel, the backward pass recomputes one batch row's states
and decays Ā (2 × length × d × n floats, within L3) and then runs the adjoint recurrence g_t = C_t ∂y_t + Ā_{t+1} g_{t+1} in reverse,
accumulating every input's gradient in the same sweep (the sums over batch and time for A and D are float64 across
batch rows).

Why not pure PyTorch: on a CPU every PyTorch op is one pass through memory. The autograd loop runs ~25 small ops per
step; the vectorised forms (`selective_scan_chunked`, or a time-major in-place loop with an analytic backward, tried
while writing this: 1.4-1.9x slower than the loop on the scan alone) stream (batch, length, channels, state) tensors
through memory ~15 times. Fusing is what gives the speed (bench/ssm_scan.py, bench/RESULTS.md).

The shared library is compiled once per kernel source and machine into $SAFEMOTION_CACHE (default
~/.cache/safemotion)/native, written atomically (temp file + rename). Without a working C compiler and glibc's libmvec
(gcc or clang on glibc Linux) `native_scan_available` is False and callers fall back to the PyTorch loop.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from safemotion.models.ssm.scan import check_scan_shapes

log = logging.getLogger(__name__)

_SOURCE = r"""
#include <math.h>
#include <string.h>

typedef float *restrict fptr;
typedef const float *restrict cfptr;

/* Layouts: u, delta, y: (batch, length, d); B, C: (batch, length, n); At = A transposed: (n, d); D: (d) or NULL.
   States are (n, d) so that the inner loops run over the d channels (long, contiguous, vectorised). */

/* One step of every channel: h = exp(dt A) h_prev + dt u B; y_t = <C, h> + D u; decay (n, d) = exp(dt A) unless NULL.
   dx: d floats of scratch. */
static void advance(cfptr u_t, cfptr dt_t, cfptr At, cfptr B_t, cfptr C_t, cfptr D, cfptr h_prev, fptr h, fptr y_t,
                    fptr decay, fptr dx, long d, long n) {
    for (long i = 0; i < d; ++i) {
        dx[i] = dt_t[i] * u_t[i];
        y_t[i] = D ? D[i] * u_t[i] : 0.0f;
    }
    for (long k = 0; k < n; ++k) {
        float b = B_t[k], c = C_t[k];
        cfptr A_k = At + k * d;
        cfptr p_k = h_prev + k * d;
        fptr h_k = h + k * d;
        if (decay) {
            fptr e_k = decay + k * d;
            for (long i = 0; i < d; ++i) {
                float a = expf(dt_t[i] * A_k[i]), v = a * p_k[i] + dx[i] * b;
                e_k[i] = a;
                h_k[i] = v;
                y_t[i] += v * c;
            }
        } else {
            for (long i = 0; i < d; ++i) {
                float v = expf(dt_t[i] * A_k[i]) * p_k[i] + dx[i] * b;
                h_k[i] = v;
                y_t[i] += v * c;
            }
        }
    }
}

/* work: 2*d*n + d floats (two state buffers used in turn, scratch). */
void scan_forward(cfptr u, cfptr delta, cfptr At, cfptr B, cfptr C, cfptr D, fptr y, fptr work,
                  long batch, long length, long d, long n) {
    for (long b = 0; b < batch; ++b) {
        memset(work, 0, sizeof(float) * 2 * d * n);
        for (long t = 0; t < length; ++t) {
            long row = b * length + t;
            float *h = work + (t & 1) * d * n, *h_prev = work + ((t + 1) & 1) * d * n;
            advance(u + row * d, delta + row * d, At, B + row * n, C + row * n, D, h_prev, h, y + row * d, NULL,
                    work + 2 * d * n, d, n);
        }
    }
}

/* Adjoint sweep g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1}, after recomputing one batch row's states and decays (not
   stored by the forward pass). work: (2*length + 3)*d*n + 4*d floats; gAt (n, d) and gD (d) are float64 and
   accumulated into. */
void scan_backward(cfptr u, cfptr delta, cfptr At, cfptr B, cfptr C, cfptr D, cfptr grad_y, fptr gu, fptr gdelta,
                   double *restrict gAt, fptr gB, fptr gC, double *restrict gD, fptr work,
                   long batch, long length, long d, long n) {
    long dn = d * n;
    fptr g = work;
    fptr zeros = work + dn;
    fptr gA_row = work + 2 * dn; /* this batch row's sum over time, added to the float64 gAt once per row */
    fptr dx = work + 3 * dn;
    fptr g_dt = dx + d;
    fptr g_write = g_dt + d;
    fptr scratch = g_write + d;
    fptr states = scratch + d;
    fptr decays = states + length * dn;
    memset(zeros, 0, sizeof(float) * dn);
    for (long b = 0; b < batch; ++b) {
        for (long t = 0; t < length; ++t) {
            long row = b * length + t;
            advance(u + row * d, delta + row * d, At, B + row * n, C + row * n, D,
                    t > 0 ? states + (t - 1) * dn : zeros, states + t * dn, scratch, decays + t * dn, dx, d, n);
        }
        memset(g, 0, sizeof(float) * dn);
        memset(gA_row, 0, sizeof(float) * dn);
        for (long t = length - 1; t >= 0; --t) {
            long row = b * length + t;
            cfptr u_t = u + row * d;
            cfptr dt_t = delta + row * d;
            cfptr gy = grad_y + row * d;
            const float *h = states + t * dn;
            const float *h_prev = t > 0 ? h - dn : zeros;
            const float *decay = decays + t * dn;
            const float *decay_next = t + 1 < length ? decay + dn : zeros;
            for (long i = 0; i < d; ++i) {
                dx[i] = dt_t[i] * u_t[i];
                g_dt[i] = 0.0f;
                g_write[i] = 0.0f;
            }
            for (long k = 0; k < n; ++k) {
                float bk = B[row * n + k], ck = C[row * n + k], sum_c = 0.0f, sum_b = 0.0f;
                cfptr A_k = At + k * d;
                cfptr h_k = h + k * d;
                cfptr p_k = h_prev + k * d;
                fptr g_k = g + k * d;
                cfptr a_k = decay + k * d;
                cfptr a_next_k = decay_next + k * d;
                fptr gA_k = gA_row + k * d;
#pragma omp simd reduction(+ : sum_c, sum_b)
                for (long i = 0; i < d; ++i) {
                    float gk = gy[i] * ck + a_next_k[i] * g_k[i];
                    float ga = gk * p_k[i] * a_k[i];
                    g_k[i] = gk;
                    sum_c += gy[i] * h_k[i];
                    sum_b += gk * dx[i];
                    g_write[i] += gk * bk;
                    g_dt[i] += ga * A_k[i];
                    gA_k[i] += ga * dt_t[i];
                }
                gC[row * n + k] = sum_c;
                gB[row * n + k] = sum_b;
            }
            for (long i = 0; i < d; ++i) {
                gdelta[row * d + i] = g_dt[i] + u_t[i] * g_write[i];
                gu[row * d + i] = dt_t[i] * g_write[i] + (D ? D[i] * gy[i] : 0.0f);
                if (gD) gD[i] += (double)gy[i] * u_t[i];
            }
        }
        for (long j = 0; j < dn; ++j) gAt[j] += gA_row[j];
    }
}
"""

# -ffast-math lets gcc vectorise expf (glibc's libmvec, linked below); -fopenmp-simd honours the one `omp simd`.
# Compiling and linking in two steps keeps crtfastmath.o (which would switch the whole process to
# flush-denormals-to-zero) out of the shared library.
_COMPILE_FLAGS = ("-O3", "-ffast-math", "-fopenmp-simd", "-march=native", "-fPIC")
_LINK_FLAGS = ("-lmvec", "-lm")


def _cache_dir() -> Path:
    return Path(os.environ.get("SAFEMOTION_CACHE", Path.home() / ".cache" / "safemotion")) / "native"


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    """The compiled kernel, building it on first use; None (logged once) when no C compiler works here."""
    compiler = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if compiler is None:
        log.warning("native selective scan unavailable: no C compiler (set CC); using the PyTorch loop")
        return None
    parts = [_SOURCE, *_COMPILE_FLAGS, *_LINK_FLAGS, compiler, platform.node(), platform.machine()]
    key = hashlib.sha256("\0".join(parts).encode())
    target = _cache_dir() / f"selective_scan-{key.hexdigest()[:16]}.so"
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                source, obj, lib = Path(tmp, "scan.c"), Path(tmp, "scan.o"), Path(tmp, "scan.so")
                source.write_text(_SOURCE)
                subprocess.run([compiler, *_COMPILE_FLAGS, "-c", str(source), "-o", str(obj)], check=True, capture_output=True)
                subprocess.run([compiler, "-shared", str(obj), "-o", str(lib), *_LINK_FLAGS], check=True, capture_output=True)
                os.replace(lib, target)
        except (OSError, subprocess.CalledProcessError) as error:
            detail = getattr(error, "stderr", b"") or b""
            log.warning("native selective scan unavailable (%s %s); using the PyTorch loop", error, detail.decode()[-500:])
            return None
    library = ctypes.CDLL(str(target))
    pointer, size = ctypes.c_void_p, ctypes.c_long
    library.scan_forward.argtypes = [pointer] * 8 + [size] * 4
    library.scan_backward.argtypes = [pointer] * 14 + [size] * 4
    return library


def native_scan_available() -> bool:
    """True when the fused C kernel is built (or can be built) on this machine."""
    return _library() is not None


def native_scan_supports(*tensors: Tensor | None) -> bool:
    """True when the kernel can run these inputs: float32 CPU tensors and a compiled library."""
    present = [t for t in tensors if t is not None]
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in present) and native_scan_available()


def selective_scan_native(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None) -> Tensor:
    """Fused C scan with the contract of `selective_scan_sequential`; float32 CPU inputs only (see native_scan_supports)."""
    check_scan_shapes(u, delta, A, B, C, D)
    if not native_scan_supports(u, delta, A, B, C, D):
        raise ValueError(
            "selective_scan_native: needs float32 CPU tensors and a C compiler; got "
            f"{sorted({(t.dtype, t.device.type) for t in (u, delta, A, B, C, D) if t is not None})} "
            "(use selective_scan_sequential instead)"
        )
    return _NativeScan.apply(u, delta, A, B, C, D)


def _ptr(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


class _NativeScan(torch.autograd.Function):
    """Forward and adjoint sweeps of the C kernel; saves only the inputs (the backward recomputes states and decays)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D):  # type: ignore[override]
        u, delta, B, C = (t.contiguous() for t in (u, delta, B, C))
        A_t = A.t().contiguous()
        D = None if D is None else D.contiguous()
        batch, length, d = u.shape
        n = A.shape[1]
        y = u.new_empty(batch, length, d)
        work = u.new_empty(2 * d * n + d)
        _library().scan_forward(*map(_ptr, (u, delta, A_t, B, C, D, y, work)), batch, length, d, n)
        ctx.save_for_backward(u, delta, A_t, B, C, D)
        return y

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        u, delta, A_t, B, C, D = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        batch, length, d = u.shape
        n = A_t.shape[0]
        gu, gdelta = torch.empty_like(u), torch.empty_like(delta)
        gB, gC = torch.empty_like(B), torch.empty_like(C)
        gA_t = torch.zeros(n, d, dtype=torch.float64)
        gD = None if D is None else torch.zeros(d, dtype=torch.float64)
        work = u.new_empty((2 * length + 3) * d * n + 4 * d)
        pointers = (u, delta, A_t, B, C, D, grad_y, gu, gdelta, gA_t, gB, gC, gD, work)
        _library().scan_backward(*map(_ptr, pointers), batch, length, d, n)
        return gu, gdelta, gA_t.t().to(A_t.dtype), gB, gC, None if gD is None else gD.to(D.dtype)
