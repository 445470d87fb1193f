/* GGUF weight-block kernels: reference dequantization and AVX2 int8 dot products.
 * Block layouts: ggml-common.h (llama.cpp); dequantization formulas: ggml-quants.c `dequantize_row_*`. */
#include "kvant_quants.h"
#include <immintrin.h>
#include <math.h>
#include <string.h>
#include <stdlib.h>

enum {
    T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8,
    T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14, T_BF16 = 30,
    T_Q4_K_SB64 = 1012,  /* internal: Q4_K accumulated per 64 values (ggml's batched gemm) */
    T_Q6_K_TILED = 1014  /* internal: Q6_K scaled per super-block as ggml's tiled kernel */
};

static inline float fp16_to_f32(uint16_t h) { return _cvtsh_ss(h); }
static inline uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline float bf16_to_f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }

int kvant_weight_type_supported(int type) {
    switch (type) {
    case T_F32: case T_F16: case T_BF16: case T_Q4_0: case T_Q4_1: case T_Q5_0: case T_Q5_1: case T_Q8_0:
    case T_Q4_K: case T_Q5_K: case T_Q6_K: return 1;
    default: return 0;
    }
}

int kvant_type_has_q8a_path(int type) {
    switch (type) {
    case T_Q4_0: case T_Q4_1: case T_Q5_0: case T_Q5_1: case T_Q8_0: case T_Q4_K: case T_Q5_K: case T_Q6_K: return 1;
    default: return 0;
    }
}

static int block_elems(int type) {
    switch (type) {
    case T_F32: case T_F16: case T_BF16: return 1;
    case T_Q4_K: case T_Q5_K: case T_Q6_K: return 256;
    default: return 32;
    }
}

/* K-quant 6-bit scale/min j (0..7) from the 12 packed scale bytes. */
static inline void scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

int kvant_dequantize_row(int type, const void *src, float *y, int64_t n) {
    if (!kvant_weight_type_supported(type) || n < 0 || n % block_elems(type) != 0) return -1;
    const uint8_t *p = (const uint8_t *)src;
    switch (type) {
    case T_F32: memcpy(y, p, (size_t)n * 4); return 0;
    case T_F16: for (int64_t i = 0; i < n; i++) y[i] = fp16_to_f32(rd16(p + 2 * i)); return 0;
    case T_BF16: for (int64_t i = 0; i < n; i++) y[i] = bf16_to_f32(rd16(p + 2 * i)); return 0;
    case T_Q8_0:
        for (int64_t b = 0; b < n / 32; b++, p += 34) {
            const float d = fp16_to_f32(rd16(p));
            for (int j = 0; j < 32; j++) y[b * 32 + j] = (float)(int8_t)p[2 + j] * d;
        }
        return 0;
    case T_Q4_0:
        for (int64_t b = 0; b < n / 32; b++, p += 18) {
            const float d = fp16_to_f32(rd16(p));
            const uint8_t *qs = p + 2;
            for (int j = 0; j < 16; j++) {
                y[b * 32 + j] = (float)((qs[j] & 0xF) - 8) * d;
                y[b * 32 + j + 16] = (float)((qs[j] >> 4) - 8) * d;
            }
        }
        return 0;
    case T_Q4_1:
        for (int64_t b = 0; b < n / 32; b++, p += 20) {
            const float d = fp16_to_f32(rd16(p)), m = fp16_to_f32(rd16(p + 2));
            const uint8_t *qs = p + 4;
            for (int j = 0; j < 16; j++) {
                y[b * 32 + j] = (float)(qs[j] & 0xF) * d + m;
                y[b * 32 + j + 16] = (float)(qs[j] >> 4) * d + m;
            }
        }
        return 0;
    case T_Q5_0:
    case T_Q5_1: {
        const int has_m = type == T_Q5_1;
        const int bs = has_m ? 24 : 22;
        for (int64_t b = 0; b < n / 32; b++, p += bs) {
            const float d = fp16_to_f32(rd16(p));
            const float m = has_m ? fp16_to_f32(rd16(p + 2)) : 0.0f;
            uint32_t qh; memcpy(&qh, p + (has_m ? 4 : 2), 4);
            const uint8_t *qs = p + (has_m ? 8 : 6);
            for (int j = 0; j < 16; j++) {
                int x0 = (qs[j] & 0xF) | (((qh >> j) & 1) << 4);
                int x1 = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
                if (has_m) {
                    y[b * 32 + j] = (float)x0 * d + m;
                    y[b * 32 + j + 16] = (float)x1 * d + m;
                } else {
                    y[b * 32 + j] = (float)(x0 - 16) * d;
                    y[b * 32 + j + 16] = (float)(x1 - 16) * d;
                }
            }
        }
        return 0;
    }
    case T_Q4_K:
    case T_Q5_K: {
        const int five = type == T_Q5_K;
        const int bs = five ? 176 : 144;
        for (int64_t b = 0; b < n / 256; b++, p += bs) {
            const float d = fp16_to_f32(rd16(p)), dmin = fp16_to_f32(rd16(p + 2));
            const uint8_t *sc = p + 4;
            const uint8_t *qh = five ? p + 16 : NULL;
            const uint8_t *qs = five ? p + 48 : p + 16;
            float *o = y + b * 256;
            for (int j = 0; j < 8; j++) {
                uint8_t s, m;
                scale_min_k4(j, sc, &s, &m);
                const float d1 = d * s, m1 = dmin * m;
                const uint8_t *q = qs + 32 * (j / 2);
                for (int l = 0; l < 32; l++) {
                    int v = (j & 1) ? (q[l] >> 4) : (q[l] & 0xF);
                    if (five) v += ((qh[l] >> j) & 1) << 4;
                    o[32 * j + l] = d1 * (float)v - m1;
                }
            }
        }
        return 0;
    }
    case T_Q6_K:
        for (int64_t b = 0; b < n / 256; b++, p += 210) {
            const uint8_t *ql = p, *qh = p + 128;
            const int8_t *sc = (const int8_t *)(p + 192);
            const float d = fp16_to_f32(rd16(p + 208));
            float *o = y + b * 256;
            for (int h = 0; h < 2; h++) {
                for (int l = 0; l < 32; l++) {
                    const int is = l / 16;
                    const int q1 = ((ql[64 * h + l] & 0xF) | (((qh[32 * h + l] >> 0) & 3) << 4)) - 32;
                    const int q2 = ((ql[64 * h + l + 32] & 0xF) | (((qh[32 * h + l] >> 2) & 3) << 4)) - 32;
                    const int q3 = ((ql[64 * h + l] >> 4) | (((qh[32 * h + l] >> 4) & 3) << 4)) - 32;
                    const int q4 = ((ql[64 * h + l + 32] >> 4) | (((qh[32 * h + l] >> 6) & 3) << 4)) - 32;
                    o[128 * h + l] = d * (float)sc[8 * h + is + 0] * (float)q1;
                    o[128 * h + l + 32] = d * (float)sc[8 * h + is + 2] * (float)q2;
                    o[128 * h + l + 64] = d * (float)sc[8 * h + is + 4] * (float)q3;
                    o[128 * h + l + 96] = d * (float)sc[8 * h + is + 6] * (float)q4;
                }
            }
        }
        return 0;
    }
    return -1;
}

void kvant_quantize_row_q8a(const float *x, kvant_block_q8a *y, int64_t n) {
    for (int64_t b = 0; b < n / 32; b++) {
        const float *xb = x + 32 * b;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) { float a = fabsf(xb[j]); amax = a > amax ? a : amax; }
        const float d = amax / 127.0f;
        const float id = d > 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            int q = (int)lrintf(xb[j] * id);
            q = q > 127 ? 127 : (q < -127 ? -127 : q);
            y[b].q[j] = (int8_t)q;
            sum += q;
        }
        y[b].d = d;
        y[b].s = d * (float)sum;
    }
}

static inline int hsum_epi32(__m256i v);

/* ggml's quantize_row_q8_0 (AVX2): d = fp16(amax/127), q = round-half-even(x·127/amax). With `q8_1`, ggml's
 * quantize_row_q8_1 instead: same d and q, s = fp16(d_fp32·Σq) (the unrounded d), as ggml_vec_dot_q4_1_q8_1 and
 * ggml_vec_dot_q5_1_q8_1 read them; otherwise s = d·Σq. */
static void quantize_row_q8_01_ggml(const float *x, kvant_block_q8a *y, int64_t n, int q8_1) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < n / 32; b++) {
        const float *xb = x + 32 * b;
        __m256 m = _mm256_andnot_ps(sign, _mm256_loadu_ps(xb));
        for (int k = 1; k < 4; k++) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(xb + 8 * k)));
        __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float amax = _mm_cvtss_f32(m4);
        const float draw = amax / 127.0f;
        const float d = fp16_to_f32(_cvtss_sh(draw, 0));
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        const __m256 mul = _mm256_set1_ps(id);
        __m256i q[4];
        for (int k = 0; k < 4; k++)
            q[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(xb + 8 * k), mul),
                                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        const __m256i s32 = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        /* int32 -> int8 with saturation, then undo the 128-bit lane interleave of the packs */
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)y[b].q, p);
        y[b].d = d;
        y[b].s = q8_1 ? fp16_to_f32(_cvtss_sh(draw * (float)hsum_epi32(s32), 0)) : d * (float)hsum_epi32(s32);
    }
}

/* ggml's quantize_row_q8_K_ref: per 256 values, max = the value of largest |x| (first one), iscale = -127/max,
 * q = min(127, round-half-even(iscale · x)), d = 1/iscale. Written as 8 blocks of 32 sharing d; the 4 bytes of `s`
 * hold the block's two int16 sums of 16 q (ggml's bsums). */
static void quantize_row_q8_K_ggml(const float *x, kvant_block_q8a *y, int64_t n) {
    for (int64_t b = 0; b < n / 256; b++) {
        const float *xb = x + 256 * b;
        kvant_block_q8a *yb = y + 8 * b;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 256; j++) {
            const float ax = fabsf(xb[j]);
            if (ax > amax) { amax = ax; max = xb[j]; }
        }
        if (amax == 0.0f) {
            for (int k = 0; k < 8; k++) { memset(yb[k].q, 0, 32); yb[k].d = 0.0f; yb[k].s = 0.0f; }
            continue;
        }
        const float iscale = -127.0f / max;
        const float d = 1.0f / iscale;
        for (int k = 0; k < 8; k++) {
            int16_t bsums[2] = {0, 0};
            for (int j = 0; j < 32; j++) {
                int v = (int)lrintf(iscale * xb[32 * k + j]);
                v = v > 127 ? 127 : v;
                yb[k].q[j] = (int8_t)v;
                bsums[j / 16] = (int16_t)(bsums[j / 16] + v);
            }
            yb[k].d = d;
            memcpy(&yb[k].s, bsums, 4);
        }
    }
}

int kvant_act_format(int type) {
    switch (type) {
    case T_Q4_0: case T_Q5_0: case T_Q8_0: return KVANT_ACT_Q8_0;
    case T_Q4_K: case T_Q5_K: case T_Q6_K: return KVANT_ACT_Q8_K;
    case T_Q4_1: case T_Q5_1: return KVANT_ACT_Q8_1;
    default: return KVANT_ACT_Q8A;
    }
}

int kvant_quantize_row_act(int format, const float *x, kvant_block_q8a *y, int64_t n) {
    switch (format) {
    case KVANT_ACT_Q8A: if (n % 32) return -1; kvant_quantize_row_q8a(x, y, n); return 0;
    case KVANT_ACT_Q8_0: if (n % 32) return -1; quantize_row_q8_01_ggml(x, y, n, 0); return 0;
    case KVANT_ACT_Q8_1: if (n % 32) return -1; quantize_row_q8_01_ggml(x, y, n, 1); return 0;
    case KVANT_ACT_Q8_K: if (n % 256) return -1; quantize_row_q8_K_ggml(x, y, n); return 0;
    default: return -1;
    }
}

/* ---------------------------------------------------------------- AVX2 int8 path */

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline int hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}

/* 32 nibbles of 16 bytes: lanes 0..15 = low nibbles, 16..31 = high nibbles. */
static inline __m256i nibbles32(const uint8_t *qs) {
    __m128i t = _mm_loadu_si128((const __m128i *)qs);
    __m256i v = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

/* Byte i = 0x10 where bit i of the 32-bit word is set, else 0. */
static inline __m256i bits32_to_0x10(uint32_t bits) {
    const __m256i sel = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL,
                                          0x0101010101010101LL, 0x0000000000000000LL);
    __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), sel);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i hit = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
    return _mm256_and_si256(hit, _mm256_set1_epi8(0x10));
}

/* Unsigned weights u (0..63) times signed activations: 8 int32 partial sums. */
static inline __m256i dot_u8s8(__m256i u, __m256i a) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), _mm256_set1_epi16(1));
}
/* Signed weights times signed activations (sign trick), int16 pair sums weighted by `w16`. */
static inline __m256i dot_s8s8_w(__m256i w, __m256i a, __m256i w16) {
    __m256i aw = _mm256_sign_epi8(w, w);
    __m256i as = _mm256_sign_epi8(a, w);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(aw, as), w16);
}

#define NA_MAX 8

static int kquant_tables_on = 1;
void kvant_set_kquant_tables(int on) { kquant_tables_on = on != 0; }

/* Tables for the Q4_K/Q5_K kernels (Q8_K activations, `na` rows of n/32 blocks each): per
 * group g of NA_MAX activation rows, bsT[g][block][i] = Σq of block `block` of row 8g+i (bs2[0] + bs2[1]) and
 * daT[g][superblock][i] = that row's d, 0 past the last row. On allocation failure both stay NULL (the scalar code). */
static void kq_tables(const kvant_block_q8a *a, int64_t na, int64_t n, int32_t **bsT, float **daT) {
    const int64_t nb = n / 32, ns = n / 256, groups = (na + NA_MAX - 1) / NA_MAX;
    int32_t *bt = malloc(sizeof(int32_t) * (size_t)(groups * nb * NA_MAX));
    float *dt = malloc(sizeof(float) * (size_t)(groups * ns * NA_MAX));
    if (!bt || !dt) { free(bt); free(dt); return; }
    for (int64_t g = 0; g < groups; g++)
        for (int i = 0; i < NA_MAX; i++) {
            const int64_t row = g * NA_MAX + i;
            for (int64_t b = 0; b < nb; b++) {
                int32_t v = 0;
                if (row < na) {
                    int16_t bs2[2];
                    memcpy(bs2, &a[row * nb + b].s, 4);
                    v = (int32_t)bs2[0] + (int32_t)bs2[1];
                }
                bt[(g * nb + b) * NA_MAX + i] = v;
            }
            for (int64_t s = 0; s < ns; s++) dt[(g * ns + s) * NA_MAX + i] = row < na ? a[row * nb + 8 * s].d : 0.0f;
        }
    *bsT = bt;
    *daT = dt;
}

/* For the Q6_K kernel: st[row][block] = the 4 bytes of `s` (the two int16 bsums) of every
 * activation block, row-major with NA_MAX·(n/32) words per group of NA_MAX rows; NULL on allocation failure. */
static int32_t *q6_tables(const kvant_block_q8a *a, int64_t na, int64_t n) {
    const int64_t nb = n / 32;
    int32_t *st = malloc(sizeof(int32_t) * (size_t)(na * nb));
    if (st)
        for (int64_t k = 0; k < na * nb; k++) memcpy(&st[k], &a[k].s, 4);
    return st;
}

#define KV_SFX(x) x##_avx2
#define KV_DPWSSD(acc, p16, w16) _mm256_add_epi32(acc, _mm256_madd_epi16(p16, w16))
#define KV_DOT_U8S8(u, a) dot_u8s8(u, a)
#define KV_DOT_S8S8(w, a) dot_s8s8_w(w, a, ones16)
#include "quants_int8.h"
#undef KV_SFX
#undef KV_DPWSSD
#undef KV_DOT_U8S8
#undef KV_DOT_S8S8

#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avxvnni"))), apply_to = function)
#define KV_SFX(x) x##_vnni
#define KV_DPWSSD(acc, p16, w16) _mm256_add_epi32(acc, _mm256_madd_epi16(p16, w16))  /* vpdpwssd measured slower on Zen 4 */
#define KV_DOT_U8S8(u, a) _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, a)
#define KV_DOT_S8S8(w, a) _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w))
#include "quants_int8.h"
#undef KV_SFX
#undef KV_DPWSSD
#undef KV_DOT_U8S8
#undef KV_DOT_S8S8
#pragma clang attribute pop

/* ---------------------------------------------------------------- AVX-512 prefill tiles (Q4_0, Q5_0, Q8_0) */

/* A tile of R weight rows × NA activation rows for the Q8_0-activation types: each weight block is decoded once
 * for NA activation rows and each activation block loaded once for R weight rows; the 32 ymm registers of
 * AVX-512VL hold the R·NA accumulators. Per block the same int32 lanes and FMA as the AVX2 kernel (and as
 * ggml_vec_dot_q5_0_q8_0 / llamafile's tinyBLAS_Q0_AVX), so results are bit-identical to it. */
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"))), apply_to = function)

static inline __attribute__((always_inline)) __m256i q0_decode_signed(const int type, const uint8_t *w) {
    if (type == T_Q8_0) return _mm256_loadu_si256((const __m256i *)(w + 2));
    if (type == T_Q4_0) return _mm256_sub_epi8(nibbles32(w + 2), _mm256_set1_epi8(8));
    uint32_t qh;
    memcpy(&qh, w + 2, 4);
    /* u - 16 = nibble - 16 where the fifth bit is clear */
    return _mm256_sub_epi8(nibbles32(w + 6), _mm256_maskz_mov_epi8((__mmask32)~qh, _mm256_set1_epi8(16)));
}

/* Exact signed int8 dot lanes without the sign trick: with a' = a + 128 (unsigned) and w signed,
 * Σ a'·w = Σ a·w + 128·Σ w, so vpdpbusd started from -128·Σw (per 4-byte lane, once per weight block) gives the
 * lanes of Σ a·w. Before the tiles run, each tile of 8 weight rows is decoded once into an L1-resident buffer (signed
 * int8 values, the -128·Σw start lanes and d_w per block) and the activations are offset to unsigned once per call, so
 * the inner loop is a load, vpdpbusd, a conversion and an FMA per (weight row, activation row, block). The scale
 * d_w·d_a of the 8 activation rows of a group comes from one vector multiply per weight row and block (`da` holds the
 * 8 rows' d of the block contiguously: the same products as one scalar multiply each), read back by the FMAs as
 * embedded broadcasts. */
static inline __attribute__((always_inline))
void q0_tile512(const int R, const int NA, const __m256i *ws, const __m256i *bias, const float *dw, int64_t nb,
                const uint8_t *au, const float *da, float *out, int64_t out_stride) {
    __m256 acc[2][8];
    for (int r = 0; r < R; r++)
        for (int i = 0; i < NA; i++) acc[r][i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i w[2], st[2];
        _Alignas(32) float dd[2][8];
        const __m256 da8 = _mm256_loadu_ps(da + 8 * b);
        for (int r = 0; r < R; r++) {
            w[r] = _mm256_load_si256(ws + r * nb + b);
            st[r] = _mm256_load_si256(bias + r * nb + b);
            _mm256_store_ps(dd[r], _mm256_mul_ps(_mm256_broadcast_ss(dw + r * nb + b), da8));
        }
        __asm__ volatile("" : : "r"(dd) : "memory");   /* keep dd in memory: the FMAs broadcast from it */
        for (int i = 0; i < NA; i++) {
            const __m256i u = _mm256_loadu_si256((const __m256i *)(au + (i * nb + b) * 32));
            for (int r = 0; r < R; r++) {
                const __m256i p = _mm256_dpbusd_epi32(st[r], u, w[r]);
                acc[r][i] = _mm256_fmadd_ps(_mm256_broadcast_ss(&dd[r][i]), _mm256_cvtepi32_ps(p), acc[r][i]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int i = 0; i < NA; i++) out[i * out_stride + r] = hsum256(acc[r][i]);
}

#define Q0_TILE_CASE(R, NA) case NA: q0_tile512(R, NA, ws, bias, dw, nb, au, da, out, os); break;
static void q0_tiles(int R, int NA, const __m256i *ws, const __m256i *bias, const float *dw, int64_t nb,
                     const uint8_t *au, const float *da, float *out, int64_t os) {
    if (R == 2) {
        switch (NA) { Q0_TILE_CASE(2, 1) Q0_TILE_CASE(2, 2) Q0_TILE_CASE(2, 3) Q0_TILE_CASE(2, 4) Q0_TILE_CASE(2, 5)
                      Q0_TILE_CASE(2, 6) Q0_TILE_CASE(2, 7) default: q0_tile512(2, 8, ws, bias, dw, nb, au, da, out, os); }
    } else {
        switch (NA) { Q0_TILE_CASE(1, 1) Q0_TILE_CASE(1, 2) Q0_TILE_CASE(1, 3) Q0_TILE_CASE(1, 4) Q0_TILE_CASE(1, 5)
                      Q0_TILE_CASE(1, 6) Q0_TILE_CASE(1, 7) default: q0_tile512(1, 8, ws, bias, dw, nb, au, da, out, os); }
    }
}
#undef Q0_TILE_CASE

static void matmul_q0_avx512(int type, const uint8_t *wb, size_t row_bytes, int64_t n, int64_t row0, int64_t row1,
                             const kvant_block_q8a *a, int64_t na, float *out, int64_t out_stride) {
    const int64_t nb = n / 32, astride = n / 32;
    const int64_t groups = (na + 7) / 8;
    const int bs = type == T_Q8_0 ? 34 : type == T_Q4_0 ? 18 : 22;
    /* da[g][b][0..7]: the d of block b of activation rows 8g..8g+7 (0 past the last row); au[i][b]: block b of
     * activation row i offset to unsigned; ws/bias/dw: the decoded weight tile (8 rows × nb blocks). */
    float *da = malloc(sizeof(float) * (size_t)(groups * nb * 8));
    uint8_t *au = malloc((size_t)(na * nb * 32));
    __m256i *ws = aligned_alloc(32, sizeof(__m256i) * (size_t)(16 * nb));
    float *dw = malloc(sizeof(float) * (size_t)(8 * nb));
    if (!da || !au || !ws || !dw) {
        free(da); free(au); free(ws); free(dw);
        matmul_q8a_avx2(type, wb, row_bytes, n, row0, row1, a, na, out, out_stride, 0);
        return;
    }
    __m256i *bias = ws + 8 * nb;
    for (int64_t g = 0; g < groups; g++)
        for (int64_t b = 0; b < nb; b++)
            for (int64_t i = 0; i < 8; i++) {
                const int64_t row = 8 * g + i;
                da[(g * nb + b) * 8 + i] = row < na ? a[row * astride + b].d : 0.0f;
            }
    const __m256i x80 = _mm256_set1_epi8((char)0x80);
    for (int64_t k = 0; k < na * nb; k++)
        _mm256_storeu_si256((__m256i *)(au + 32 * k), _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)a[k].q), x80));
    /* Weight tiles of 8 rows, decoded once, stay in L1 while every group of 8 activation rows passes over them. */
    for (int64_t t0 = row0; t0 < row1; t0 += 8) {
        const int64_t t1 = t0 + 8 < row1 ? t0 + 8 : row1;
        for (int64_t r = 0; r < t1 - t0; r++)
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *blk = wb + (size_t)(t0 + r) * row_bytes + (size_t)b * bs;
                const __m256i w = type == T_Q8_0 ? q0_decode_signed(T_Q8_0, blk)
                                : type == T_Q4_0 ? q0_decode_signed(T_Q4_0, blk) : q0_decode_signed(T_Q5_0, blk);
                ws[r * nb + b] = w;
                bias[r * nb + b] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_dpbusd_epi32(_mm256_setzero_si256(), x80, w));
                dw[r * nb + b] = fp16_to_f32(rd16(blk));
            }
        for (int64_t g = 0; g < groups; g++) {
            const int64_t i0 = 8 * g;
            const int cnt = (int)(na - i0 < 8 ? na - i0 : 8);
            for (int64_t r = t0; r < t1; r += 2) {
                const int R = t1 - r >= 2 ? 2 : 1;
                const int64_t k = r - t0;
                q0_tiles(R, cnt, ws + k * nb, bias + k * nb, dw + k * nb, nb, au + i0 * nb * 32, da + g * nb * 8,
                         out + i0 * out_stride + r, out_stride);
            }
        }
    }
    free(da); free(au); free(ws); free(dw);
}

/* Decode (one activation row) for Q4_0/Q5_0/Q8_0. The weights enter vpdpbusd as unsigned bytes u = w + K (Q4_0: the
 * nibble, K = 8; Q5_0: nibble | fifth bit << 4, K = 16; Q8_0: w xor 0x80, K = 128) against the signed activations,
 * each lane started from -K·(the sum of its 4 activations), computed once per activation block: so every lane is
 * exactly the int32 Σ w·a of the same 4 values as ggml_vec_dot_q*_0_q8_0's lanes (and the AVX2 kernel's), followed
 * by the same FMA by d_w·d_a per block and the same horizontal sum: bit-identical results, in 4 vector operations
 * per block for Q8_0 and 7 for Q5_0 (the AVX2 sign trick needs 4 for the product alone, plus 5 to expand Q5_0's
 * fifth bits). */
static inline __attribute__((always_inline)) __m256i q0_decode_unsigned(const int type, const uint8_t *w) {
    if (type == T_Q8_0) return _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(w + 2)), _mm256_set1_epi8((char)0x80));
    if (type == T_Q4_0) return nibbles32(w + 2);
    uint32_t qh;
    memcpy(&qh, w + 2, 4);
    return _mm256_or_si256(nibbles32(w + 6), _mm256_maskz_mov_epi8((__mmask32)qh, _mm256_set1_epi8(0x10)));
}

static inline __attribute__((always_inline))
void q0_gemv_rows(const int type, const uint8_t *w, size_t row_bytes, int64_t nb, int64_t r0, int64_t r1,
                  const kvant_block_q8a *a, const __m256i *bias, float *out) {
    const int bs = type == T_Q8_0 ? 34 : type == T_Q4_0 ? 18 : 22;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wr = w + (size_t)r * row_bytes;
        _mm_prefetch((const char *)(wr + row_bytes), _MM_HINT_T0);
        __m256 acc = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *wb = wr + (size_t)b * bs;
            const __m256i p = _mm256_dpbusd_epi32(bias[b], q0_decode_unsigned(type, wb),
                                                  _mm256_loadu_si256((const __m256i *)a[b].q));
            acc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(fp16_to_f32(rd16(wb))), _mm256_set1_ps(a[b].d)),
                                  _mm256_cvtepi32_ps(p), acc);
        }
        out[r] = hsum256(acc);
    }
}

/* One row at a time: interleaving 4 weight rows (sharing the activation loads) measured 2.5× slower on the
 * 178 MB Q8_0 output head here (Zen 4): the row streams defeat the hardware prefetcher. */
static void gemv_q4_0_512(const uint8_t *w, size_t rb, int64_t nb, int64_t r0, int64_t r1, const kvant_block_q8a *a,
                          const __m256i *bias, float *out) { q0_gemv_rows(T_Q4_0, w, rb, nb, r0, r1, a, bias, out); }
static void gemv_q5_0_512(const uint8_t *w, size_t rb, int64_t nb, int64_t r0, int64_t r1, const kvant_block_q8a *a,
                          const __m256i *bias, float *out) { q0_gemv_rows(T_Q5_0, w, rb, nb, r0, r1, a, bias, out); }
static void gemv_q8_0_512(const uint8_t *w, size_t rb, int64_t nb, int64_t r0, int64_t r1, const kvant_block_q8a *a,
                          const __m256i *bias, float *out) { q0_gemv_rows(T_Q8_0, w, rb, nb, r0, r1, a, bias, out); }

/* A few activation rows (batched decode: one row per running sequence): each weight block is decoded once, straight
 * from the weight stream as the one-row GEMV does, and used for every activation row, with the GEMV's lanes (unsigned
 * weights against signed activations, started from -K·Σa) and the same FMA by d_w·d_a per block: bit-identical to it
 * and to the tiles. The tiles instead decode 8 weight rows into an L1 buffer and then compute, so the DRAM stream and
 * the arithmetic alternate and the hardware prefetcher idles during the compute (on the 178 MB output head at 8
 * rows that made a step cost 2.5 one-row GEMVs; a stream keeps memory and arithmetic overlapped). */
static inline __attribute__((always_inline))
void q0_gemvm_rows(const int type, const int M, const uint8_t *w, size_t row_bytes, int64_t nb, int64_t r0, int64_t r1,
                   const __m256i *aq, const __m256i *bias, const float *d8, float *out, int64_t out_stride) {
    const int bs = type == T_Q8_0 ? 34 : type == T_Q4_0 ? 18 : 22;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wr = w + (size_t)r * row_bytes;
        _mm_prefetch((const char *)(wr + row_bytes), _MM_HINT_T0);
        __m256 acc[16];
        for (int i = 0; i < M; i++) acc[i] = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *wb = wr + (size_t)b * bs;
            const __m256i wu = q0_decode_unsigned(type, wb);
            _Alignas(32) float sc[16];
            const __m256 dw = _mm256_set1_ps(fp16_to_f32(rd16(wb)));
            _mm256_store_ps(sc, _mm256_mul_ps(dw, _mm256_load_ps(d8 + 16 * b)));
            if (M > 8) _mm256_store_ps(sc + 8, _mm256_mul_ps(dw, _mm256_load_ps(d8 + 16 * b + 8)));
            __asm__ volatile("" : : "r"(sc) : "memory");   /* keep sc in memory: the FMAs broadcast from it */
            const __m256i *ab = aq + b * M, *bb = bias + b * M;
            for (int i = 0; i < M; i++) {
                const __m256i p = _mm256_dpbusd_epi32(_mm256_load_si256(bb + i), wu, _mm256_load_si256(ab + i));
                acc[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(sc + i), _mm256_cvtepi32_ps(p), acc[i]);
            }
        }
        for (int i = 0; i < M; i++) out[i * out_stride + r] = hsum256(acc[i]);
    }
}

#define Q0_GEMVM_CASE(T, M) case M: q0_gemvm_rows(T, M, w, rb, nb, r0, r1, aq, bias, d8, out, os); break;
#define Q0_GEMVM_TYPE(NAME, T)                                                                                          \
static void NAME(int m, const uint8_t *w, size_t rb, int64_t nb, int64_t r0, int64_t r1, const __m256i *aq,          \
                 const __m256i *bias, const float *d8, float *out, int64_t os) {                                       \
    switch (m) { Q0_GEMVM_CASE(T, 2) Q0_GEMVM_CASE(T, 3) Q0_GEMVM_CASE(T, 4) Q0_GEMVM_CASE(T, 5) Q0_GEMVM_CASE(T, 6)  \
                 Q0_GEMVM_CASE(T, 7) Q0_GEMVM_CASE(T, 8) Q0_GEMVM_CASE(T, 9) \
                 Q0_GEMVM_CASE(T, 10) Q0_GEMVM_CASE(T, 11) Q0_GEMVM_CASE(T, 12) Q0_GEMVM_CASE(T, 13) Q0_GEMVM_CASE(T, 14)   \
                 Q0_GEMVM_CASE(T, 15) default: q0_gemvm_rows(T, 16, w, rb, nb, r0, r1, aq, bias, d8, out, os); }             \
}
Q0_GEMVM_TYPE(gemvm_q4_0_512, T_Q4_0)
Q0_GEMVM_TYPE(gemvm_q5_0_512, T_Q5_0)
Q0_GEMVM_TYPE(gemvm_q8_0_512, T_Q8_0)
#undef Q0_GEMVM_TYPE
#undef Q0_GEMVM_CASE

/* Per activation row and block, the lanes' start -K·(Σ of each lane's 4 activations) of the unsigned-weight form. */
static void q0_unsigned_bias(int type, const kvant_block_q8a *a, int64_t nblocks, __m256i *bias) {
    const int shift = type == T_Q8_0 ? 7 : type == T_Q4_0 ? 3 : 4;
    for (int64_t b = 0; b < nblocks; b++) {
        const __m256i s4 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(1),
                                               _mm256_loadu_si256((const __m256i *)a[b].q));
        bias[b] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(s4, shift));
    }
}

/* 2..16 activation rows (the rows of a batched decode step: up to max_num_seqs 16 in one pass over the weights; more
 * rows go in groups of 16). Each group's activations are packed block-major (block b: the m rows' 32 int8 values,
 * their lane starts, their d padded to 16) so the inner loop addresses them at constant offsets. */
static int gemvm_q0_avx512(int type, const uint8_t *wb, size_t row_bytes, int64_t n, int64_t row0, int64_t row1,
                           const kvant_block_q8a *a, int64_t na, float *out, int64_t out_stride) {
    const int64_t nb = n / 32;
    __m256i *buf = aligned_alloc(32, sizeof(__m256i) * (size_t)(2 * 16 * nb + 2 * nb));
    if (!buf) return -1;
    __m256i *aq = buf, *bias = buf + 16 * nb;
    float *d8 = (float *)(buf + 32 * nb);
    __m256i one_bias;
    for (int64_t i0 = 0; i0 < na; i0 += 16) {
        const int m = (int)(na - i0 < 16 ? na - i0 : 16);
        const kvant_block_q8a *ai = a + i0 * nb;
        float *oi = out + i0 * out_stride;
        for (int64_t b = 0; b < nb; b++)
            for (int i = 0; i < 16; i++) {
                d8[16 * b + i] = i < m ? ai[i * nb + b].d : 0.0f;
                if (i >= m) continue;
                aq[b * m + i] = _mm256_loadu_si256((const __m256i *)ai[i * nb + b].q);
                q0_unsigned_bias(type, &ai[i * nb + b], 1, &one_bias);
                bias[b * m + i] = one_bias;
            }
        if (m == 1) {
            /* the one-row GEMV reads the lane starts per block, row-major: the same as block-major for one row */
            if (type == T_Q8_0) gemv_q8_0_512(wb, row_bytes, nb, row0, row1, ai, bias, oi);
            else if (type == T_Q4_0) gemv_q4_0_512(wb, row_bytes, nb, row0, row1, ai, bias, oi);
            else gemv_q5_0_512(wb, row_bytes, nb, row0, row1, ai, bias, oi);
        } else if (type == T_Q8_0) gemvm_q8_0_512(m, wb, row_bytes, nb, row0, row1, aq, bias, d8, oi, out_stride);
        else if (type == T_Q4_0) gemvm_q4_0_512(m, wb, row_bytes, nb, row0, row1, aq, bias, d8, oi, out_stride);
        else gemvm_q5_0_512(m, wb, row_bytes, nb, row0, row1, aq, bias, d8, oi, out_stride);
    }
    free(buf);
    return 0;
}

static void gemv_q0_avx512(int type, const uint8_t *wb, size_t row_bytes, int64_t n, int64_t row0, int64_t row1,
                           const kvant_block_q8a *a, float *out) {
    const int64_t nb = n / 32;
    __m256i stack_bias[256];
    __m256i *bias = nb <= 256 ? stack_bias : aligned_alloc(32, sizeof(__m256i) * (size_t)nb);
    if (!bias) { matmul_q8a_avx2(type, wb, row_bytes, n, row0, row1, a, 1, out, 0, 0); return; }
    const int shift = type == T_Q8_0 ? 7 : type == T_Q4_0 ? 3 : 4;
    for (int64_t b = 0; b < nb; b++) {
        const __m256i s4 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(1),
                                               _mm256_loadu_si256((const __m256i *)a[b].q));
        bias[b] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(s4, shift));
    }
    if (type == T_Q8_0) gemv_q8_0_512(wb, row_bytes, nb, row0, row1, a, bias, out);
    else if (type == T_Q4_0) gemv_q4_0_512(wb, row_bytes, nb, row0, row1, a, bias, out);
    else gemv_q5_0_512(wb, row_bytes, nb, row0, row1, a, bias, out);
    if (bias != stack_bias) free(bias);
}
#pragma clang attribute pop

#include <cpuid.h>
/* AVX-VNNI: CPUID.(EAX=7, ECX=1):EAX bit 4 (and the OS saves YMM state, implied by AVX2 working). */
static int cached_vnni = -1;
static int has_avx_vnni(void) {
    int cached = cached_vnni;
    if (cached < 0) {
        unsigned a = 0, b = 0, c = 0, d = 0;
        int ok = __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 4));
        const char *env = getenv("KVANT_NO_VNNI");
        cached = ok && !(env && env[0] == '1');
        cached_vnni = cached;
    }
    return cached;
}
/* AVX-512 F/BW/VL/VNNI with the OS saving the ZMM state (checked by __builtin_cpu_supports). */
static int cached_avx512 = -1;
static int has_avx512_vnni(void) {
    int cached = cached_avx512;
    if (cached < 0) {
        __builtin_cpu_init();
        const int ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                       __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
        const char *env = getenv("KVANT_NO_AVX512");
        cached = ok && !(env && env[0] == '1');
        cached_avx512 = cached;
    }
    return cached;
}

static const int gemvm_max_rows = 16;

int kvant_matmul_q8a_rounding(int type, const void *w, size_t row_bytes, int64_t n, int64_t row0, int64_t row1,
                              const kvant_block_q8a *a, int64_t na, float *out, int64_t out_stride, int batch_rounding) {
    if (has_avx512_vnni() && na >= 1 && (type == T_Q4_0 || type == T_Q5_0 || type == T_Q8_0) && n % 32 == 0) {
        if (na == 1) gemv_q0_avx512(type, (const uint8_t *)w, row_bytes, n, row0, row1, a, out);
        else if (na <= gemvm_max_rows && gemvm_q0_avx512(type, (const uint8_t *)w, row_bytes, n, row0, row1, a, na, out, out_stride) == 0) {}
        else matmul_q0_avx512(type, (const uint8_t *)w, row_bytes, n, row0, row1, a, na, out, out_stride);
        return 0;
    }
    if (has_avx_vnni()) return matmul_q8a_vnni(type, w, row_bytes, n, row0, row1, a, na, out, out_stride, batch_rounding);
    return matmul_q8a_avx2(type, w, row_bytes, n, row0, row1, a, na, out, out_stride, batch_rounding);
}

int kvant_matmul_q8a(int type, const void *w, size_t row_bytes, int64_t n, int64_t row0, int64_t row1,
                     const kvant_block_q8a *a, int64_t na, float *out, int64_t out_stride) {
    return kvant_matmul_q8a_rounding(type, w, row_bytes, n, row0, row1, a, na, out, out_stride, 0);
}

int kvant_int8_kernel_variant(void) { return has_avx512_vnni() ? 2 : has_avx_vnni() ? 1 : 0; }

int kvant_force_int8_kernel_variant(int variant) {
    unsigned a = 0, b = 0, c = 0, d = 0;
    int ok = __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 4));
    if (variant == 1 && !ok) return -1;
    if (variant == 2) {
        cached_avx512 = -1;
        cached_vnni = -1;
        if (!has_avx512_vnni()) return -1;
        return 0;
    }
    cached_vnni = variant == 1 ? 1 : variant == 0 ? 0 : -1;
    cached_avx512 = variant == -1 ? -1 : 0;
    return 0;
}

/* ---------------------------------------------------------------- fp32-activation path */

static inline float dot_f32(const float *x, const float *y, int64_t n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), acc1);
    }
    float s = hsum256(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) s += x[i] * y[i];
    return s;
}

static inline float dot_f16(const uint16_t *x, const float *y, int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 xv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i)));
        acc = _mm256_fmadd_ps(xv, _mm256_loadu_ps(y + i), acc);
    }
    float s = hsum256(acc);
    for (; i < n; i++) s += fp16_to_f32(x[i]) * y[i];
    return s;
}

static inline float dot_bf16(const uint16_t *x, const float *y, int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(x + i)));
        __m256 xv = _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
        acc = _mm256_fmadd_ps(xv, _mm256_loadu_ps(y + i), acc);
    }
    float s = hsum256(acc);
    for (; i < n; i++) s += bf16_to_f32(x[i]) * y[i];
    return s;
}

int kvant_matmul_f32(int type, const void *w, size_t row_bytes, int64_t n, int64_t row0, int64_t row1,
                     const float *a, int64_t na, float *out, int64_t out_stride, float *scratch) {
    if (!kvant_weight_type_supported(type) || n % block_elems(type) != 0) return -1;
    const uint8_t *wb = (const uint8_t *)w;
    for (int64_t r = row0; r < row1; r++) {
        const uint8_t *row = wb + (size_t)r * row_bytes;
        const float *wf = NULL;
        if (type == T_F32) {
            wf = (const float *)row;
        } else if (type != T_F16 && type != T_BF16) {
            kvant_dequantize_row(type, row, scratch, n);
            wf = scratch;
        }
        for (int64_t i = 0; i < na; i++) {
            const float *ai = a + i * n;
            float s;
            if (type == T_F16) s = dot_f16((const uint16_t *)row, ai, n);
            else if (type == T_BF16) s = dot_bf16((const uint16_t *)row, ai, n);
            else s = dot_f32(wf, ai, n);
            out[i * out_stride + r] = s;
        }
    }
    return 0;
}
