"""A fused CPU selective scan: a small C kernel (built with the system C compiler on first use) behind an autograd Function.

Same contract and numbers as `selective_scan_sequential` (float32, to round-off), but fused: for every (batch, step)
the state of all channels (d × n floats) stays in cache and exp(Δ A), Δ B u and <C, h> are computed in registers
(expf vectorised). Nothing of shape (batch, length, channels, state) is kept between the passes: as in the mamba CUDA
kernel, the backward pass recomputes one batch row's states (length × d × n floats, cache-sized) and then runs the
adjoint recurrence g_t = C_t ∂y_t + Ā_{t+1} g_{t+1} in reverse, accumulating every input's gradient in the same sweep
(the sums over batch and time for A and D are float64 across batch rows).

Why not pure PyTorch: on a CPU every PyTorch op is one pass through memory. The autograd loop runs ~25 small ops per
step; the vectorised forms (`selective_scan_chunked`, or a time-major in-place loop with an analytic backward, tried
while writing this: 1.4-1.9x slower than the loop on the scan alone) stream (batch, length, channels, state) tensors
through memory ~15 times. Fusing is what gives the speed (bench/ssm_scan.py, bench/RESULTS.md).

The shared library is compiled once per kernel source and machine into $SAFEMOTION_CACHE (default
~/.cache/safemotion)/native, written atomically (temp file + rename). Without a working C compiler `native_scan_available`
is False and callers fall back to the PyTorch loop.
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

/* Layouts: u, delta, y: (batch, length, d); B, C: (batch, length, n); A: (d, n); D: (d) or NULL. */

/* One step of every channel: h = exp(dt A) h_prev + dt u B; y_row (or NULL) = <C, h> + D u. */
static void advance(cfptr u_t, cfptr dt_t, cfptr A, cfptr B_t, cfptr C_t, cfptr D, cfptr h_prev, fptr h, float *y_t,
                    long d, long n) {
    for (long i = 0; i < d; ++i) {
        float dt = dt_t[i], x = u_t[i], dx = dt * x, acc = 0.0f;
        cfptr A_i = A + i * n;
        cfptr p_i = h_prev + i * n;
        fptr h_i = h + i * n;
        for (long k = 0; k < n; ++k) {
            float v = expf(dt * A_i[k]) * p_i[k] + dx * B_t[k];
            h_i[k] = v;
            acc += v * C_t[k];
        }
        if (y_t) y_t[i] = acc + (D ? D[i] * x : 0.0f);
    }
}

/* work: 2*d*n floats (two state buffers used in turn). */
void scan_forward(cfptr u, cfptr delta, cfptr A, cfptr B, cfptr C, cfptr D, fptr y, fptr work,
                  long batch, long length, long d, long n) {
    for (long b = 0; b < batch; ++b) {
        memset(work, 0, sizeof(float) * 2 * d * n);
        for (long t = 0; t < length; ++t) {
            long row = b * length + t;
            float *h = work + (t & 1) * d * n, *h_prev = work + ((t + 1) & 1) * d * n;
            advance(u + row * d, delta + row * d, A, B + row * n, C + row * n, D, h_prev, h, y + row * d, d, n);
        }
    }
}

/* Adjoint sweep g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1}, after recomputing one batch row's states (not stored by the
   forward pass). work: (length + 4)*d*n + 2*n floats; gA (d, n) and gD (d) are float64 and accumulated into. */
void scan_backward(cfptr u, cfptr delta, cfptr A, cfptr B, cfptr C, cfptr D, cfptr grad_y, fptr gu, fptr gdelta,
                   double *restrict gA, fptr gB, fptr gC, double *restrict gD, fptr work,
                   long batch, long length, long d, long n) {
    fptr g = work;
    fptr a_next = work + d * n;
    fptr zeros = work + 2 * d * n;
    fptr gA_row = work + 3 * d * n; /* this batch row's sum over time, added to the float64 gA once per row */
    fptr gb = work + 4 * d * n;
    fptr gc = gb + n;
    fptr states = gc + n;
    memset(zeros, 0, sizeof(float) * d * n);
    for (long b = 0; b < batch; ++b) {
        for (long t = 0; t < length; ++t) {
            long row = b * length + t;
            advance(u + row * d, delta + row * d, A, B + row * n, C + row * n, D,
                    t > 0 ? states + (t - 1) * d * n : zeros, states + t * d * n, NULL, d, n);
        }
        memset(work, 0, sizeof(float) * 2 * d * n);
        memset(gA_row, 0, sizeof(float) * d * n);
        for (long t = length - 1; t >= 0; --t) {
            long row = b * length + t;
            cfptr B_t = B + row * n;
            cfptr C_t = C + row * n;
            const float *h = states + t * d * n;
            const float *h_prev = t > 0 ? h - d * n : zeros;
            memset(gb, 0, sizeof(float) * 2 * n);
            for (long i = 0; i < d; ++i) {
                float dt = delta[row * d + i], x = u[row * d + i], gy = grad_y[row * d + i], dx = dt * x;
                cfptr A_i = A + i * n;
                cfptr h_i = h + i * n;
                cfptr p_i = h_prev + i * n;
                fptr g_i = g + i * n;
                fptr a_i = a_next + i * n;
                fptr gA_i = gA_row + i * n;
                float g_dt = 0.0f, g_write = 0.0f;
#pragma omp simd reduction(+ : g_dt, g_write)
                for (long k = 0; k < n; ++k) {
                    float gk = gy * C_t[k] + a_i[k] * g_i[k];
                    float a = expf(dt * A_i[k]);
                    float ga = gk * p_i[k] * a;
                    g_i[k] = gk;
                    a_i[k] = a;
                    gc[k] += gy * h_i[k];
                    gb[k] += gk * dx;
                    g_write += gk * B_t[k];
                    g_dt += ga * A_i[k];
                    gA_i[k] += ga * dt;
                }
                gdelta[row * d + i] = g_dt + x * g_write;
                gu[row * d + i] = dt * g_write + (D ? D[i] * gy : 0.0f);
                if (gD) gD[i] += (double)gy * x;
            }
            memcpy(gB + row * n, gb, sizeof(float) * n);
            memcpy(gC + row * n, gc, sizeof(float) * n);
        }
        for (long j = 0; j < d * n; ++j) gA[j] += gA_row[j];
    }
}
"""

# -ffast-math lets gcc vectorise expf (glibc's libmvec, linked below), -fopenmp-simd honours the one `omp simd`; compiling and linking in two steps keeps
# crtfastmath.o (which would switch the whole process to flush-denormals-to-zero) out of the shared library.
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
    key = hashlib.sha256("\0".join([_SOURCE, *_COMPILE_FLAGS, *_LINK_FLAGS, compiler, platform.node(), platform.machine()]).encode())
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
    """Forward and adjoint sweeps of the C kernel; saves only the inputs (the backward recomputes the states)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D):  # type: ignore[override]
        u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
        D = None if D is None else D.contiguous()
        batch, length, d = u.shape
        n = A.shape[1]
        y = u.new_empty(batch, length, d)
        work = u.new_empty(2 * d * n)
        _library().scan_forward(*map(_ptr, (u, delta, A, B, C, D, y, work)), batch, length, d, n)
        ctx.save_for_backward(u, delta, A, B, C, D)
        return y

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        u, delta, A, B, C, D = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        batch, length, d = u.shape
        n = A.shape[1]
        gu, gdelta = torch.empty_like(u), torch.empty_like(delta)
        gB, gC = torch.empty_like(B), torch.empty_like(C)
        gA = torch.zeros(d, n, dtype=torch.float64)
        gD = None if D is None else torch.zeros(d, dtype=torch.float64)
        work = u.new_empty((length + 4) * d * n + 2 * n)
        pointers = (u, delta, A, B, C, D, grad_y, gu, gdelta, gA, gB, gC, gD, work)
        _library().scan_backward(*map(_ptr, pointers), batch, length, d, n)
        return gu, gdelta, gA.to(A.dtype), gB, gC, None if gD is None else gD.to(D.dtype)
