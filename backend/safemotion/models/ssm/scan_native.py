"""Fused CPU kernels of Mamba's selective SSM: small C kernels (built with the system C compiler on first use) behind
autograd Functions: the selective scan, the depthwise causal conv + SiLU before it, the SiLU gate after it, and
SeRpEnt's gated row gather.

The scan has the contract and numbers of `selective_scan_sequential` (float32, to round-off), but fused: for every
(batch, step) the state of all channels (n rows of d floats, each padded to whole 8-float vectors, channels innermost
so the loops vectorise over d with no scalar remainder) stays in cache and exp(Δ A) (an inline polynomial 2^x,
vectorised), Δ B u and <C, h> are computed in registers. Options as mamba_ssm's kernel: Δ = softplus(raw Δ) inside
the kernel, and `reverse` (scan from the end, for the second direction of a bidirectional Mamba, without flipped
copies). Nothing of shape (batch, length, channels, state) is kept between
the passes: the forward keeps every 16th state; the backward, chunk by chunk from the end, recomputes 16 steps'
states and decays Ā from the checkpoint (2 × 16 × d × n floats, within L2) and runs the adjoint recurrence
g_t = C_t ∂y_t + Ā_{t+1} g_{t+1} over them, accumulating every input's gradient in the same sweep (the sums over batch
and time for A and D are float64 across batch rows).

The conv kernel reads the (batch, length, d) rows of in_proj's output in place (no transposes) and recomputes its
pre-activation in the backward; it is the causal conv of `SelectiveSSM`, or its mirror image with `reverse`. The gate
kernel forms Mamba's (y_forward + y_backward) · SiLU(z) in one pass, reading z in place from in_proj's output.

The row-gather kernel is SeRpEnt's resampling glue (`serpent.ResamplingBranch`): window members gathered, multiplied
by their time gate and masked in one pass, and the restore to full length; the backward scatters into x in one pass.
In PyTorch these were gather (expanded index), mul, where and, back, scatter_add: ≈ 16 % of a SeRpEnt training step.

Why not pure PyTorch: on a CPU every PyTorch op is one pass through memory. The autograd loop runs ~25 small ops per
step; the vectorised forms (`selective_scan_chunked`, or a time-major in-place loop with an analytic backward, tried
while writing this: 1.4-1.9x slower than the loop on the scan alone) stream (batch, length, channels, state) tensors
through memory ~15 times. Fusing is what gives the speed (bench/ssm_scan.py, bench/RESULTS.md).

The shared library is compiled once per kernel source and machine into $SAFEMOTION_CACHE (default
~/.cache/safemotion)/native, written atomically (temp file + rename). Without a working C compiler and glibc's libmvec
(gcc or clang on glibc Linux) `native_scan_available` is False and callers fall back to the PyTorch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from safemotion.models.ssm.scan import check_scan_shapes

log = logging.getLogger(__name__)

_SOFTPLUS, _REVERSE = 1, 2  # the kernel's flag bits
_CHUNK = 16  # the kernel's CHUNK: steps between the states kept for the backward (sizes the buffers passed to C)
_LANES = 8  # the kernel's LANES: state rows are padded to a multiple of this many floats (8 = one AVX2 register)

_SOURCE = r"""
#include <math.h>
#include <string.h>

typedef float *restrict fptr;
typedef const float *restrict cfptr;

/* Steps between the states the forward pass keeps for the backward: its recompute buffers (2 CHUNK n d floats)
   stay in L2. */
#define CHUNK @CHUNK@
#define LANES @LANES@
enum { SOFTPLUS = @SOFTPLUS@, REVERSE = @REVERSE@ };

/* 2^x in float32 to 1e-7 (relative): x = k + f with k = rint(x), |f| <= 1/2; 2^f by a degree-6 polynomial fitted on
   Chebyshev nodes (exactly 1 at f = 0, so a zero step keeps the state exactly), 2^k through the exponent bits. Inline
   so that gcc vectorises it; x is clamped to [-126, 127] (results under 1.2e-38 do not matter next to 1e-5). */
static inline float exp2_poly(float x) {
    x = fminf(fmaxf(x, -126.0f), 127.0f);
    float k = rintf(x), f = x - k;
    float p = 1.5461447765e-4f;
    p = fmaf(p, f, 1.3390866807e-3f);
    p = fmaf(p, f, 9.6180569381e-3f);
    p = fmaf(p, f, 5.5503569543e-2f);
    p = fmaf(p, f, 2.4022650719e-1f);
    p = fmaf(p, f, 6.9314718246e-1f);
    p = fmaf(p, f, 1.0f);
    int bits = ((int)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

#define LOG2E 1.44269504088896341f
#define LN2 0.693147180559945309f

/* Layouts: u, delta, y: (batch, length, d); B, C: (batch, length, n); At = A log2(e) transposed: (n, d), so that
   exp(dt A) = 2^(dt At); D: (d) or NULL.
   States are (n, d) so that the inner loops run over the d channels (long, contiguous, vectorised). Step s of a row
   reads time t = s, or t = length - 1 - s with REVERSE. */
static inline long time_of(long s, long length, int flags) { return flags & REVERSE ? length - 1 - s : s; }

/* Where raw Δ comes from: `raw` (batch, length, d), or, when `low` is set, a Linear of rank `rank` (mamba's dt_proj):
   raw = bias + W low, low (batch, length, rank) rows low_stride floats apart, W given transposed as Wt (rank, d). */
typedef struct {
    const float *raw, *low, *Wt, *bias;
    long rank, low_stride;
} delta_source;

/* One step's raw Δ (into raw) and Δ: softplus(raw) (torch's: raw above 20 passes unchanged) with SOFTPLUS, else raw. */
static void step_delta(const delta_source *src, long row, fptr raw, fptr dt, long d, int flags) {
    if (src->low) {
        cfptr low = src->low + row * src->low_stride;
        memcpy(raw, src->bias, sizeof(float) * d);
        for (long r = 0; r < src->rank; ++r) {
            float l = low[r];
            cfptr w = src->Wt + r * d;
            for (long i = 0; i < d; ++i) raw[i] += w[i] * l;
        }
    } else {
        memcpy(raw, src->raw + row * d, sizeof(float) * d);
    }
    if (flags & SOFTPLUS) {
        for (long i = 0; i < d; ++i) dt[i] = raw[i] > 20.0f ? raw[i] : log1pf(exp2_poly(raw[i] * LOG2E));
    } else {
        memcpy(dt, raw, sizeof(float) * d);
    }
}

/* The state, decay and At rows are dp = d rounded up to LANES (the vector width) floats long and zero past d, as are
   the per-step rows (dt, dx, gy) the loops over them read, so those loops run over whole vectors with no scalar
   remainder (at d = 60, SeRpEnt's branch width, the 4-channel scalar tail cost about as much as the 7 vector steps)
   and the padded channels stay exactly 0. */
long padded(long d) { return (d + LANES - 1) / LANES * LANES; }

/* Floats between two (n, dp) state-sized work buffers: 2 LANES more than their size, so that no two of them start a
   multiple of 4 KiB apart (at dp n = 1024 the loads of one and the stores of the next alias in the L1 and the forward
   ran 1.7x slower). */
static inline long state_stride(long d, long n) { return padded(d) * n + 2 * LANES; }

/* Floats of the work buffer scan_forward (backward = 0) or scan_backward (1) needs. */
long scan_work_floats(long d, long n, long rank, int backward) {
    long dp = padded(d), ds = state_stride(d, n);
    return backward ? (2 * CHUNK + 3) * ds + (2 * CHUNK + 5 + rank) * dp : 2 * ds + 4 * dp;
}

/* One step of every channel: h = exp(dt A) h_prev + dx B (dx = dt u); with `output` (the forward), y_t += <C, h>;
   else (the backward's recompute) the decays exp(dt A) are stored in decay. Always inlined with a constant `output`,
   so each caller gets its own branch-free loop. */
static inline __attribute__((always_inline)) void advance(cfptr dx, cfptr dt_t, cfptr At, cfptr B_t, cfptr C_t,
                                                          cfptr h_prev, fptr h, fptr y_t, fptr decay, long dp, long n,
                                                          const int output) {
    for (long k = 0; k < n; ++k) {
        float b = B_t[k], c = output ? C_t[k] : 0.0f;
        cfptr A_k = At + k * dp;
        cfptr p_k = h_prev + k * dp;
        fptr h_k = h + k * dp;
        for (long i = 0; i < dp; ++i) {
            float a = exp2_poly(dt_t[i] * A_k[i]);
            float v = a * p_k[i] + dx[i] * b;
            h_k[i] = v;
            if (output) y_t[i] += v * c;
            else decay[k * dp + i] = a;
        }
    }
}

/* ckpt: (batch, ceil(length / CHUNK), n, dp), the state entering every CHUNK-th step (for the backward), or NULL.
   At: (n, dp). work: scan_work_floats(d, n, 0, 0) floats (two state buffers used in turn, scratch). */
void scan_forward(cfptr u, const delta_source *delta, cfptr At, cfptr B, cfptr C, cfptr D, fptr y, fptr ckpt, fptr work,
                  long batch, long length, long d, long n, int flags) {
    long dp = padded(d), dn = dp * n, ds = state_stride(d, n), chunks = (length + CHUNK - 1) / CHUNK;
    fptr dt = work + 2 * ds, dx = dt + dp, raw = dx + dp, y_t = raw + dp;
    memset(dt, 0, sizeof(float) * 4 * dp);
    for (long b = 0; b < batch; ++b) {
        memset(work, 0, sizeof(float) * 2 * ds);
        for (long s = 0; s < length; ++s) {
            long row = b * length + time_of(s, length, flags);
            float *h = work + (s & 1) * ds, *h_prev = work + ((s + 1) & 1) * ds;
            cfptr u_t = u + row * d;
            if (ckpt && s % CHUNK == 0) memcpy(ckpt + (b * chunks + s / CHUNK) * dn, h_prev, sizeof(float) * dn);
            step_delta(delta, row, raw, dt, d, flags);
            for (long i = 0; i < d; ++i) {
                dx[i] = dt[i] * u_t[i];
                y_t[i] = D ? D[i] * u_t[i] : 0.0f;
            }
            advance(dx, dt, At, B + row * n, C + row * n, h_prev, h, y_t, NULL, dp, n, 1);
            memcpy(y + row * d, y_t, sizeof(float) * d);
        }
    }
}

/* Adjoint sweep g_s = C_s dy_s + exp(dt_{s+1} A) g_{s+1}, chunk by chunk from the end: each chunk's states, decays
   and Δ are recomputed from its checkpoint into cache-sized buffers first. work: scan_work_floats(d, n, rank, 1)
   floats; gAt (n, d), gD (d) and, with a low-rank source, gWt (rank, d) and gbias (d) are
   float64 and accumulated into. The raw Δ's gradient goes to gdelta (batch, length, d), or, with a low-rank source,
   to glow (batch, length, rank), gWt and gbias. */
void scan_backward(cfptr u, const delta_source *delta, cfptr At, cfptr B, cfptr C, cfptr D, cfptr grad_y, cfptr ckpt,
                   fptr gu, fptr gdelta, fptr glow, double *restrict gWt, double *restrict gbias, double *restrict gAt,
                   fptr gB, fptr gC, double *restrict gD, fptr work, long batch, long length, long d, long n,
                   int flags) {
    long rank = delta->low ? delta->rank : 0;
    long dp = padded(d), dn = dp * n, ds = state_stride(d, n), chunks = (length + CHUNK - 1) / CHUNK;
    fptr g = work;
    fptr gA_row = work + ds; /* this batch row's sum over time, added to the float64 gAt once per row */
    fptr decay_after = work + 2 * ds; /* decay of the step after the current chunk (zero after the last step) */
    fptr states = work + 3 * ds;
    fptr decays = states + CHUNK * ds;
    fptr dts = decays + CHUNK * ds;
    fptr raws = dts + CHUNK * dp;
    fptr dx = raws + CHUNK * dp;
    fptr gy = dx + dp;
    fptr g_dt = gy + dp;
    fptr g_write = g_dt + dp;
    fptr gbias_row = g_write + dp; /* low-rank source: this batch row's sums, then added to the float64 totals */
    fptr gW_row = gbias_row + dp;
    memset(dts, 0, sizeof(float) * (2 * CHUNK + 2) * dp); /* dts, raws, dx, gy: written up to d only from here on */
    for (long b = 0; b < batch; ++b) {
        memset(g, 0, sizeof(float) * 3 * ds);
        memset(gbias_row, 0, sizeof(float) * (rank + 1) * dp);
        for (long c = chunks - 1; c >= 0; --c) {
            long s0 = c * CHUNK, s1 = s0 + CHUNK < length ? s0 + CHUNK : length;
            cfptr h_start = ckpt + (b * chunks + c) * dn;
            for (long s = s0; s < s1; ++s) {
                long j = s - s0, row = b * length + time_of(s, length, flags);
                cfptr u_t = u + row * d;
                fptr dt_t = dts + j * dp;
                step_delta(delta, row, raws + j * dp, dt_t, d, flags);
                for (long i = 0; i < d; ++i) dx[i] = dt_t[i] * u_t[i];
                advance(dx, dt_t, At, B + row * n, NULL, j ? states + (j - 1) * ds : h_start, states + j * ds, NULL,
                        decays + j * ds, dp, n, 0);
            }
            for (long s = s1 - 1; s >= s0; --s) {
                long j = s - s0, row = b * length + time_of(s, length, flags);
                cfptr u_t = u + row * d;
                cfptr dt_t = dts + j * dp;
                const float *h = states + j * ds;
                const float *h_prev = j ? h - ds : h_start;
                const float *decay = decays + j * ds;
                const float *decay_next = s + 1 < s1 ? decay + ds : decay_after;
                memcpy(gy, grad_y + row * d, sizeof(float) * d);
                for (long i = 0; i < d; ++i) dx[i] = dt_t[i] * u_t[i];
                memset(g_dt, 0, sizeof(float) * 2 * dp);
                for (long k = 0; k < n; ++k) {
                    float bk = B[row * n + k], ck = C[row * n + k], sum_c = 0.0f, sum_b = 0.0f;
                    cfptr A_k = At + k * dp;
                    cfptr h_k = h + k * dp;
                    cfptr p_k = h_prev + k * dp;
                    fptr g_k = g + k * dp;
                    cfptr a_k = decay + k * dp;
                    cfptr a_next_k = decay_next + k * dp;
                    fptr gA_k = gA_row + k * dp;
#pragma omp simd reduction(+ : sum_c, sum_b)
                    for (long i = 0; i < dp; ++i) {
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
                cfptr raw = raws + j * dp;
                for (long i = 0; i < d; ++i) {
                    float g_delta = g_dt[i] * LN2 + u_t[i] * g_write[i]; /* g_dt summed ga At = ga A log2(e) */
                    if ((flags & SOFTPLUS) && raw[i] <= 20.0f) g_delta /= 1.0f + exp2_poly(-raw[i] * LOG2E);
                    g_dt[i] = g_delta; /* now the raw Δ's gradient */
                    gu[row * d + i] = dt_t[i] * g_write[i] + (D ? D[i] * gy[i] : 0.0f);
                    if (gD) gD[i] += (double)gy[i] * u_t[i];
                }
                if (delta->low) {
                    cfptr low = delta->low + row * delta->low_stride;
                    for (long i = 0; i < d; ++i) gbias_row[i] += g_dt[i];
                    for (long r = 0; r < rank; ++r) {
                        float l = low[r], sum = 0.0f;
                        cfptr w = delta->Wt + r * d;
                        fptr gw = gW_row + r * dp;
#pragma omp simd reduction(+ : sum)
                        for (long i = 0; i < d; ++i) {
                            sum += g_dt[i] * w[i];
                            gw[i] += g_dt[i] * l;
                        }
                        glow[row * rank + r] = sum;
                    }
                } else {
                    memcpy(gdelta + row * d, g_dt, sizeof(float) * d);
                }
            }
            memcpy(decay_after, decays, sizeof(float) * dn);
        }
        for (long k = 0; k < n; ++k)
            for (long i = 0; i < d; ++i) gAt[k * d + i] += gA_row[k * dp + i];
        for (long r = 0; r < rank; ++r)
            for (long i = 0; i < d; ++i) gWt[r * d + i] += gW_row[r * dp + i];
        for (long i = 0; rank && i < d; ++i) gbias[i] += gbias_row[i];
    }
}

/* Depthwise conv along time + SiLU, (batch, length, d) layout, x rows x_stride floats apart: pre-activation
   c_t = bias + sum_j w_j x_{t-(K-1)+j} (causal), or x_{t+(K-1)-j} with REVERSE (the causal conv of the reversed
   sequence, reversed back); out = c sigmoid(c). wt: weights transposed to (K, d). */
static void conv_pre(cfptr x, long x_stride, cfptr wt, cfptr bias, fptr c, long b, long t, long length, long d, long K,
                     int flags) {
    memcpy(c, bias, sizeof(float) * d);
    for (long j = 0; j < K; ++j) {
        long src = flags & REVERSE ? t + (K - 1) - j : t - (K - 1) + j;
        if (src < 0 || src >= length) continue;
        cfptr xs = x + (b * length + src) * x_stride;
        cfptr w = wt + j * d;
        for (long i = 0; i < d; ++i) c[i] += w[i] * xs[i];
    }
}

void conv_silu_forward(cfptr x, long x_stride, cfptr wt, cfptr bias, fptr out, long batch, long length, long d, long K,
                       int flags) {
    for (long b = 0; b < batch; ++b) {
        for (long t = 0; t < length; ++t) {
            fptr o = out + (b * length + t) * d;
            conv_pre(x, x_stride, wt, bias, o, b, t, length, d, K, flags);
            for (long i = 0; i < d; ++i) o[i] = o[i] / (1.0f + exp2_poly(-o[i] * LOG2E));
        }
    }
}

/* gx (batch, length, d) is overwritten; gwt (K, d) and gbias (d) are float64 and accumulated into.
   work: (K + 3) * d floats. */
void conv_silu_backward(cfptr x, long x_stride, cfptr wt, cfptr bias, cfptr gout, fptr gx, double *restrict gwt,
                        double *restrict gbias, fptr work, long batch, long length, long d, long K, int flags) {
    fptr pre = work, gc = work + d, gb_row = work + 2 * d, gw_row = work + 3 * d;
    memset(gx, 0, sizeof(float) * batch * length * d);
    for (long b = 0; b < batch; ++b) {
        memset(gb_row, 0, sizeof(float) * (K + 1) * d);
        for (long t = 0; t < length; ++t) {
            conv_pre(x, x_stride, wt, bias, pre, b, t, length, d, K, flags);
            cfptr go = gout + (b * length + t) * d;
            for (long i = 0; i < d; ++i) {
                float s = 1.0f / (1.0f + exp2_poly(-pre[i] * LOG2E));
                gc[i] = go[i] * s * (1.0f + pre[i] * (1.0f - s));
                gb_row[i] += gc[i];
            }
            for (long j = 0; j < K; ++j) {
                long src = flags & REVERSE ? t + (K - 1) - j : t - (K - 1) + j;
                if (src < 0 || src >= length) continue;
                cfptr xs = x + (b * length + src) * x_stride;
                cfptr w = wt + j * d;
                fptr gxs = gx + (b * length + src) * d;
                fptr gw = gw_row + j * d;
                for (long i = 0; i < d; ++i) {
                    gxs[i] += w[i] * gc[i];
                    gw[i] += gc[i] * xs[i];
                }
            }
        }
        for (long i = 0; i < d; ++i) gbias[i] += gb_row[i];
        for (long j = 0; j < K * d; ++j) gwt[j] += gw_row[j];
    }
}

/* Mamba's gate: out = (y1 + y2) silu(z), y2 (the second direction) or NULL; y1, y2, out (rows, d); z rows z_stride
   floats apart (its half of in_proj's output, read in place). The backward writes gy (the gradient of y1 and of y2)
   and gz (rows, d). */
static inline float sigmoid(float z) { return 1.0f / (1.0f + exp2_poly(-z * LOG2E)); }

void gate_silu_forward(cfptr y1, cfptr y2, cfptr z, long z_stride, fptr out, long rows, long d) {
    for (long r = 0; r < rows; ++r) {
        cfptr zr = z + r * z_stride;
        long o = r * d;
        for (long i = 0; i < d; ++i) out[o + i] = (y1[o + i] + (y2 ? y2[o + i] : 0.0f)) * zr[i] * sigmoid(zr[i]);
    }
}

void gate_silu_backward(cfptr y1, cfptr y2, cfptr z, long z_stride, cfptr gout, fptr gy, fptr gz, long rows, long d) {
    for (long r = 0; r < rows; ++r) {
        cfptr zr = z + r * z_stride;
        long o = r * d;
        for (long i = 0; i < d; ++i) {
            float s = sigmoid(zr[i]), y = y1[o + i] + (y2 ? y2[o + i] : 0.0f);
            gy[o + i] = gout[o + i] * zr[i] * s;
            gz[o + i] = gout[o + i] * y * s * (1.0f + zr[i] * (1.0f - s));
        }
    }
}

/* SeRpEnt's row gathers (window members, restore): out[b, r] = gate[b, r] x[b, index[b, r]] with the time gate
   gate = 1 + bias + W phi, phi_q = exp(-(dt[b, r] - centres_q)^2 / (2 width^2)), q < m (Wt: W transposed and bias,
   rows padded(d) floats long and zero past d; dt (batch, count)), or the row itself without dt (NULL); index -1 gives
   a zero row. x (batch, length, d), index (batch, count), out (batch, count, d). Returns 0, or 1 + the first entry
   of index outside [-1, length) (then out is incomplete). work: gather_work_floats(d, m, 0) floats. */
static void rbf(float dt, cfptr centres, float inv_width, fptr phi, long m) {
    for (long q = 0; q < m; ++q) {
        float z = (dt - centres[q]) * inv_width;
        phi[q] = exp2_poly(-0.5f * LOG2E * z * z);
    }
}

static void time_gate(cfptr phi, cfptr Wt, cfptr bias, fptr gate, long dp, long m) {
    for (long i = 0; i < dp; ++i) gate[i] = 1.0f + bias[i];
    for (long q = 0; q < m; ++q) {
        float f = phi[q];
        cfptr w = Wt + q * dp;
        for (long i = 0; i < dp; ++i) gate[i] += w[i] * f;
    }
}

/* Floats of the work buffer gather_rows_forward (backward = 0) or gather_rows_backward (1) needs. */
long gather_work_floats(long d, long m, int backward) {
    long dp = padded(d);
    return backward ? (m + 4) * dp + m : dp + m;
}

long gather_rows_forward(cfptr x, const long *restrict index, cfptr dt, cfptr centres, float inv_width, cfptr Wt,
                         cfptr bias, fptr out, fptr work, long batch, long length, long count, long d, long m) {
    long dp = padded(d);
    for (long b = 0; b < batch; ++b) {
        for (long r = 0; r < count; ++r) {
            long row = b * count + r, j = index[row];
            fptr o = out + row * d;
            if (j < -1 || j >= length) return row + 1;
            if (j < 0) {
                memset(o, 0, sizeof(float) * d);
                continue;
            }
            cfptr xs = x + (b * length + j) * d;
            if (!dt) {
                memcpy(o, xs, sizeof(float) * d);
                continue;
            }
            rbf(dt[row], centres, inv_width, work + dp, m);
            time_gate(work + dp, Wt, bias, work, dp, m);
            for (long i = 0; i < d; ++i) o[i] = work[i] * xs[i];
        }
    }
    return 0;
}

/* gx (batch, length, d) is overwritten: the sum of gate grad_out over the rows that read each x row, in row order.
   With dt: gdt (batch, count) is overwritten (zero for index -1); gWt (m, d) and gbias (d) are float64 and
   accumulated into. index as checked by gather_rows_forward. work: gather_work_floats(d, m, 1) floats. */
void gather_rows_backward(cfptr x, const long *restrict index, cfptr dt, cfptr centres, float inv_width, cfptr Wt,
                          cfptr bias, cfptr gout, fptr gx, fptr gdt, double *restrict gWt, double *restrict gbias,
                          fptr work, long batch, long length, long count, long d, long m) {
    long dp = padded(d);
    /* go, xs: this row's grad_out and x, copied into zero-tailed rows so that the loops over W run over whole vectors */
    fptr gate = work, go = gate + dp, xs = go + dp, gb_row = xs + dp, gw_row = gb_row + dp, phi = gw_row + m * dp;
    memset(go, 0, sizeof(float) * 2 * dp);
    memset(gx, 0, sizeof(float) * batch * length * d);
    for (long b = 0; b < batch; ++b) {
        if (dt) memset(gb_row, 0, sizeof(float) * (m + 1) * dp);
        for (long r = 0; r < count; ++r) {
            long row = b * count + r, j = index[row];
            if (j < 0) {
                if (dt) gdt[row] = 0.0f;
                continue;
            }
            fptr gxs = gx + (b * length + j) * d;
            if (!dt) {
                cfptr g_out = gout + row * d;
                for (long i = 0; i < d; ++i) gxs[i] += g_out[i];
                continue;
            }
            memcpy(go, gout + row * d, sizeof(float) * d);
            memcpy(xs, x + (b * length + j) * d, sizeof(float) * d);
            rbf(dt[row], centres, inv_width, phi, m);
            time_gate(phi, Wt, bias, gate, dp, m);
            float g_dt = 0.0f;
            for (long i = 0; i < d; ++i) gxs[i] += gate[i] * go[i];
            for (long i = 0; i < dp; ++i) {
                xs[i] *= go[i]; /* now go x, the gate's gradient */
                gb_row[i] += xs[i];
            }
            for (long q = 0; q < m; ++q) {
                float f = phi[q], sum = 0.0f;
                cfptr w = Wt + q * dp;
                fptr gw = gw_row + q * dp;
#pragma omp simd reduction(+ : sum)
                for (long i = 0; i < dp; ++i) {
                    sum += xs[i] * w[i];
                    gw[i] += xs[i] * f;
                }
                /* d phi_q / d dt = -phi_q (dt - centre_q) / width^2 */
                g_dt -= sum * f * (dt[row] - centres[q]) * inv_width * inv_width;
            }
            gdt[row] = g_dt;
        }
        if (!dt) continue;
        for (long i = 0; i < d; ++i) gbias[i] += gb_row[i];
        for (long q = 0; q < m; ++q)
            for (long i = 0; i < d; ++i) gWt[q * d + i] += gw_row[q * dp + i];
    }
}
"""
_SOURCE = (_SOURCE.replace("@CHUNK@", str(_CHUNK)).replace("@LANES@", str(_LANES)).replace("@SOFTPLUS@", str(_SOFTPLUS))
           .replace("@REVERSE@", str(_REVERSE)))  # one definition of each, shared with the C

# -ffast-math lets gcc vectorise log1pf (glibc's libmvec, linked below); -fopenmp-simd honours the one `omp simd`.
# Compiling and linking in two steps keeps crtfastmath.o (which would switch the whole process to
# flush-denormals-to-zero) out of the shared library.
_COMPILE_FLAGS = ("-O3", "-ffast-math", "-fopenmp-simd", "-march=native", "-fPIC")
_LINK_FLAGS = ("-lmvec", "-lm")


def _cache_dir() -> Path:
    return Path(os.environ.get("SAFEMOTION_CACHE", Path.home() / ".cache" / "safemotion")) / "native"


class _DeltaSource(ctypes.Structure):
    """The kernel's delta_source: raw Δ values, or the input, transposed weight and bias of a low-rank Linear."""

    _fields_ = [("raw", ctypes.c_void_p), ("low", ctypes.c_void_p), ("Wt", ctypes.c_void_p), ("bias", ctypes.c_void_p),
                ("rank", ctypes.c_long), ("low_stride", ctypes.c_long)]


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
    pointer, size, flag, source = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.POINTER(_DeltaSource)
    library.scan_forward.argtypes = [pointer, source] + [pointer] * 7 + [size] * 4 + [flag]
    library.scan_backward.argtypes = [pointer, source] + [pointer] * 16 + [size] * 4 + [flag]
    library.padded.argtypes, library.padded.restype = [size], size
    library.scan_work_floats.argtypes, library.scan_work_floats.restype = [size, size, size, flag], size
    library.conv_silu_forward.argtypes = [pointer, size, pointer, pointer, pointer] + [size] * 4 + [flag]
    library.conv_silu_backward.argtypes = [pointer, size] + [pointer] * 7 + [size] * 4 + [flag]
    real = ctypes.c_float
    library.gate_silu_forward.argtypes = [pointer] * 3 + [size, pointer] + [size] * 2
    library.gate_silu_backward.argtypes = [pointer] * 3 + [size] + [pointer] * 3 + [size] * 2
    library.gather_rows_forward.argtypes = [pointer] * 4 + [real] + [pointer] * 4 + [size] * 5
    library.gather_rows_forward.restype = size
    library.gather_work_floats.argtypes, library.gather_work_floats.restype = [size, size, flag], size
    library.gather_rows_backward.argtypes = [pointer] * 4 + [real] + [pointer] * 8 + [size] * 5
    return library


# Flags of the C kernels.
_LOG2E = 1.0 / math.log(2.0)


def native_scan_available() -> bool:
    """True when the fused C kernel is built (or can be built) on this machine."""
    return _library() is not None


def native_scan_supports(*tensors: Tensor | None) -> bool:
    """True when the kernel can run these inputs: float32 CPU tensors and a compiled library."""
    present = [t for t in tensors if t is not None]
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in present) and native_scan_available()


def _require_native(where: str, *tensors: Tensor | None) -> None:
    if not native_scan_supports(*tensors):
        raise ValueError(
            f"{where}: needs float32 CPU tensors and a C compiler; got "
            f"{sorted({(t.dtype, t.device.type) for t in tensors if t is not None})} (use the PyTorch path instead)"
        )


def selective_scan_native(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                          delta_softplus: bool = False, reverse: bool = False,
                          delta_proj: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Fused C scan with the contract of `selective_scan_sequential`; float32 CPU inputs only (see native_scan_supports).

    delta_softplus: delta holds raw values and Δ = softplus(delta) is taken inside (as mamba_ssm's kernel).
    reverse: scan from the last step to the first (= the sequential scan of the time-reversed inputs, reversed back).
    delta_proj: (weight (d, rank), bias (d,)) of a Linear (Mamba's dt_proj); delta is then that Linear's input
    (batch, length, rank) and raw Δ = delta @ weight.T + bias is formed inside the kernel, step by step.
    """
    if delta_proj is None:
        check_scan_shapes(u, delta, A, B, C, D)
        weight = bias = None
    else:
        check_scan_shapes(u, u, A, B, C, D)
        weight, bias = delta_proj
        rank = weight.shape[-1]
        if delta.shape != (*u.shape[:2], rank) or weight.shape != (u.shape[2], rank) or bias.shape != (u.shape[2],):
            raise ValueError(
                f"selective_scan_native: with delta_proj, delta must be (batch, length, rank), weight (d, rank) and bias "
                f"(d,) for u {tuple(u.shape)}; got {tuple(delta.shape)}, {tuple(weight.shape)}, {tuple(bias.shape)}"
            )
    _require_native("selective_scan_native", u, delta, A, B, C, D, weight, bias)
    flags = (_SOFTPLUS if delta_softplus else 0) | (_REVERSE if reverse else 0)
    return _NativeScan.apply(u, delta, A, B, C, D, weight, bias, flags)


def causal_conv_silu_native(x: Tensor, weight: Tensor, bias: Tensor, reverse: bool = False) -> Tensor:
    """SiLU(depthwise causal conv along time) of x (batch, length, d) with an nn.Conv1d's weight (d, 1, K) and bias (d,);
    equals F.silu(conv(x.transpose(1, 2))[..., :length].transpose(1, 2)) for that conv with padding K - 1.
    reverse: anti-causal (the causal conv of the time-reversed x, reversed back)."""
    if x.dim() != 3 or weight.dim() != 3 or weight.shape[:2] != (x.shape[2], 1) or bias.shape != (x.shape[2],):
        raise ValueError(f"causal_conv_silu_native: need x (batch, length, d), weight (d, 1, K), bias (d,); got "
                         f"{tuple(x.shape)}, {tuple(weight.shape)}, {tuple(bias.shape)}")
    _require_native("causal_conv_silu_native", x, weight, bias)
    return _NativeConvSilu.apply(x, weight, bias, _REVERSE if reverse else 0)


def _ptr(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _delta_source(delta: Tensor, stride: int, W_t: Tensor | None, bias: Tensor | None) -> _DeltaSource:
    if W_t is None:
        return _DeltaSource(delta.data_ptr(), None, None, None, 0, 0)
    return _DeltaSource(None, delta.data_ptr(), W_t.data_ptr(), bias.data_ptr(), W_t.shape[0], stride)


class _NativeScan(torch.autograd.Function):
    """Forward and adjoint sweeps of the C kernel; saves the inputs and every 16th state (the backward recomputes the
    states and decays in between, one cache-sized chunk at a time)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, weight, bias, flags):  # type: ignore[override]
        u, B, C = (t.contiguous() for t in (u, B, C))
        delta, stride = (delta.contiguous(), 0) if weight is None else _rows(delta)
        W_t = None if weight is None else weight.t().contiguous()
        bias = None if bias is None else bias.contiguous()
        D = None if D is None else D.contiguous()
        batch, length, d = u.shape
        n, dp = A.shape[1], _library().padded(d)
        A_t = u.new_zeros(n, dp)
        A_t[:, :d] = (A * _LOG2E).t()
        y = u.new_empty(batch, length, d)
        ckpt = u.new_empty(batch, -(-length // _CHUNK), n, dp) if any(ctx.needs_input_grad) else None
        work = u.new_empty(_library().scan_work_floats(d, n, 0, 0))
        source = _delta_source(delta, stride, W_t, bias)
        _library().scan_forward(_ptr(u), ctypes.byref(source), *map(_ptr, (A_t, B, C, D, y, ckpt, work)),
                                batch, length, d, n, flags)
        ctx.save_for_backward(u, delta, A_t, B, C, D, ckpt, W_t, bias)
        ctx.flags, ctx.stride = flags, stride
        return y

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        u, delta, A_t, B, C, D, ckpt, W_t, bias = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        batch, length, d = u.shape
        n = A_t.shape[0]
        rank = 0 if W_t is None else W_t.shape[0]
        gu, gB, gC = torch.empty_like(u), torch.empty_like(B), torch.empty_like(C)
        gdelta = u.new_empty(batch, length, rank or d)
        gA_t = torch.zeros(n, d, dtype=torch.float64)
        gD = None if D is None else torch.zeros(d, dtype=torch.float64)
        gW_t = None if W_t is None else torch.zeros(rank, d, dtype=torch.float64)
        gbias = None if W_t is None else torch.zeros(d, dtype=torch.float64)
        work = u.new_empty(_library().scan_work_floats(d, n, rank, 1))
        source = _delta_source(delta, ctx.stride, W_t, bias)
        raw_grad, low_grad = (gdelta, None) if W_t is None else (None, gdelta)
        pointers = (A_t, B, C, D, grad_y, ckpt, gu, raw_grad, low_grad, gW_t, gbias, gA_t, gB, gC, gD, work)
        _library().scan_backward(_ptr(u), ctypes.byref(source), *map(_ptr, pointers), batch, length, d, n, ctx.flags)
        return (gu, gdelta, gA_t.t().to(u.dtype), gB, gC, None if gD is None else gD.to(D.dtype),
                None if gW_t is None else gW_t.t().to(u.dtype), None if gbias is None else gbias.to(u.dtype), None)


def _rows(x: Tensor) -> tuple[Tensor, int]:
    """x itself when its (batch, length) rows are evenly spaced with contiguous channels (as a chunk of a Linear's
    output), else a contiguous copy; and the row stride in floats."""
    batch, length, _ = x.shape
    if x.stride(2) != 1 or (batch > 1 and x.stride(0) != length * x.stride(1)):
        x = x.contiguous()
    return x, x.stride(1)


class _NativeConvSilu(torch.autograd.Function):
    """Depthwise conv + SiLU in one pass each way; saves the input (the backward recomputes the pre-activation)."""

    @staticmethod
    def forward(ctx, x, weight, bias, flags):  # type: ignore[override]
        x, stride = _rows(x)
        batch, length, d = x.shape
        wt = weight.reshape(d, -1).t().contiguous()
        bias = bias.contiguous()
        out = x.new_empty(batch, length, d)
        _library().conv_silu_forward(*map(_ptr, (x,)), stride, *map(_ptr, (wt, bias, out)), batch, length, d,
                                     wt.shape[0], flags)
        ctx.save_for_backward(x, wt, bias)
        ctx.stride, ctx.flags = stride, flags
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, wt, bias = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        batch, length, d = x.shape
        K = wt.shape[0]
        gx = x.new_empty(batch, length, d)
        gwt = torch.zeros(K, d, dtype=torch.float64)
        gbias = torch.zeros(d, dtype=torch.float64)
        work = x.new_empty((K + 3) * d)
        pointers = (wt, bias, grad_out, gx, gwt, gbias, work)
        _library().conv_silu_backward(_ptr(x), ctx.stride, *map(_ptr, pointers), batch, length, d, K, ctx.flags)
        return gx, gwt.t().reshape(d, 1, K).to(wt.dtype), gbias.to(bias.dtype), None


def gate_silu_native(y1: Tensor, y2: Tensor | None, z: Tensor) -> Tensor:
    """Mamba's gate (y1 + y2) * F.silu(z) in one pass each way, all (batch, length, d); y2 may be None; z may be a
    chunk of a wider tensor (read in place)."""
    if y1.dim() != 3 or z.shape != y1.shape or (y2 is not None and y2.shape != y1.shape):
        raise ValueError(f"gate_silu_native: y1, y2 and z must share one (batch, length, d) shape; got {tuple(y1.shape)}, "
                         f"{None if y2 is None else tuple(y2.shape)}, {tuple(z.shape)}")
    _require_native("gate_silu_native", y1, y2, z)
    return _NativeGateSilu.apply(y1, y2, z)


class _NativeGateSilu(torch.autograd.Function):
    """(y1 + y2) silu(z); saves the inputs (the backward recomputes the sigmoid)."""

    @staticmethod
    def forward(ctx, y1, y2, z):  # type: ignore[override]
        y1, y2 = y1.contiguous(), None if y2 is None else y2.contiguous()
        z, stride = _rows(z)
        out = torch.empty_like(y1)
        rows, d = y1.shape[0] * y1.shape[1], y1.shape[2]
        _library().gate_silu_forward(_ptr(y1), _ptr(y2), _ptr(z), stride, _ptr(out), rows, d)
        ctx.save_for_backward(y1, y2, z)
        ctx.stride = stride
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        y1, y2, z = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        gy, gz = torch.empty_like(y1), torch.empty_like(y1)
        rows, d = y1.shape[0] * y1.shape[1], y1.shape[2]
        _library().gate_silu_backward(*map(_ptr, (y1, y2, z)), ctx.stride, *map(_ptr, (grad_out, gy, gz)), rows, d)
        return gy, None if y2 is None else gy, gz


def gather_rows_native(x: Tensor, index: Tensor, gate: TimeGate | None = None) -> Tensor:
    """Rows of x (batch, length, d) picked per batch row by index (batch, count), int64 in [-1, length) (checked in the
    kernel's pass), times the time gate 1 + Linear(φ(dt)) of `gate`, or the rows themselves; index −1 gives a zero row.
    Equals where(index ≥ 0, (1 + F.linear(φ(dt), weight, bias)) * x.gather(1, index), 0) in value and gradients (of
    x, dt, weight, bias), without forming φ or the (batch, count, d) gate (float32 CPU only)."""
    batch, length, d = x.shape
    count = index.shape[1] if index.dim() == 2 else -1
    shapes_ok = index.shape == (batch, count) and (gate is None or (
        gate.dt.shape == (batch, count) and gate.weight.shape == (d, *gate.centres.shape) and gate.bias.shape == (d,)))
    if not shapes_ok or index.dtype != torch.int64:
        raise ValueError(f"gather_rows_native: need x (batch, length, d), int64 index (batch, count) and a TimeGate with "
                         f"dt (batch, count), centres (m,), weight (d, m), bias (d,), or None; got {tuple(x.shape)}, "
                         f"{index.dtype} {tuple(index.shape)}, {gate and [tuple(t.shape) for t in gate.tensors()]}")
    tensors = (None,) * 4 if gate is None else gate.tensors()
    _require_native("gather_rows_native", x, *tensors)
    return _NativeGatherRows.apply(x, index, *tensors, 0.0 if gate is None else 1.0 / gate.width)


@dataclass(frozen=True)
class TimeGate:
    """SeRpEnt's time gate 1 + W φ(dt) + b with Gaussian RBFs φ_q(dt) = exp(−(dt − centres_q)² / (2 width²))."""

    dt: Tensor  # (batch, count) time difference of each gathered row to its slot
    centres: Tensor  # (m,)
    width: float
    weight: Tensor  # (d, m)
    bias: Tensor  # (d,)

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """dt, centres, weight, bias."""
        return self.dt, self.centres, self.weight, self.bias


class _NativeGatherRows(torch.autograd.Function):
    """Gather, time gate and mask in one pass; the backward recomputes the gate, scatters into x and forms the gradients
    of dt, weight and bias in one pass."""

    @staticmethod
    def forward(ctx, x, index, dt, centres, weight, bias, inv_width):  # type: ignore[override]
        x, index = x.contiguous(), index.contiguous()
        batch, length, d = x.shape
        count = index.shape[1]
        m = 0 if dt is None else centres.shape[0]
        library = _library()
        if dt is not None:  # the kernel's W and bias rows are padded(d) floats, zero past d
            dp = library.padded(d)
            W_t, bias_p = x.new_zeros(m, dp), x.new_zeros(dp)
            W_t[:, :d], bias_p[:d] = weight.t(), bias
            dt, centres, weight, bias = dt.contiguous(), centres.contiguous(), W_t, bias_p
        out = x.new_empty(batch, count, d)
        work = x.new_empty(library.gather_work_floats(d, m, 0))
        pointers = (x, index, dt, centres)
        bad = library.gather_rows_forward(*map(_ptr, pointers), inv_width, *map(_ptr, (weight, bias, out, work)),
                                          batch, length, count, d, m)
        if bad:
            raise ValueError(f"gather_rows_native: index must lie in [-1, {length}), got {int(index.view(-1)[bad - 1])} "
                             f"at (row, entry) {divmod(bad - 1, count)}")
        ctx.save_for_backward(x, index, dt, centres, weight, bias)
        ctx.inv_width = inv_width
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, index, dt, centres, W_t, bias = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        batch, length, d = x.shape
        count = index.shape[1]
        m = 0 if dt is None else centres.shape[0]
        gx = torch.empty_like(x)
        gdt = None if dt is None else torch.empty_like(dt)
        gW_t = None if dt is None else torch.zeros(m, d, dtype=torch.float64)
        gbias = None if dt is None else torch.zeros(d, dtype=torch.float64)
        work = x.new_empty(_library().gather_work_floats(d, m, 1))
        after = (W_t, bias, grad_out, gx, gdt, gW_t, gbias, work)
        _library().gather_rows_backward(*map(_ptr, (x, index, dt, centres)), ctx.inv_width, *map(_ptr, after),
                                        batch, length, count, d, m)
        if dt is None:
            return gx, None, None, None, None, None, None
        return gx, None, gdt, None, gW_t.t().to(x.dtype), gbias.to(x.dtype), None
