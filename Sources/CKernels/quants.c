/* GGUF weight-block kernels: reference dequantization and AVX2 int8 dot products.
 * Block layouts: ggml-common.h (llama.cpp); dequantization formulas: ggml-quants.c `dequantize_row_*`. */
#include "kvant_quants.h"
#include <immintrin.h>
#include <math.h>
#include <string.h>

enum {
    T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8,
    T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14, T_BF16 = 30
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

/* ---------------------------------------------------------------- AVX2 int8 path */

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
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

#define NA_MAX 4

/* One weight row against `na` (1..4) activation rows. `astride` = blocks between activation rows. */
static inline __attribute__((always_inline))
void dot_row_q(const int type, const uint8_t *w, int64_t n, const kvant_block_q8a *a, int64_t astride, const int na,
               float *res) {
    __m256 acc[NA_MAX];
    float macc[NA_MAX];
    for (int i = 0; i < NA_MAX; i++) { acc[i] = _mm256_setzero_ps(); macc[i] = 0.0f; }
    const __m256i ones16 = _mm256_set1_epi16(1);

    switch (type) {
    case T_Q8_0:
        for (int64_t b = 0; b < n / 32; b++, w += 34) {
            const float d = fp16_to_f32(rd16(w));
            const __m256i q = _mm256_loadu_si256((const __m256i *)(w + 2));
            for (int i = 0; i < na; i++) {
                const kvant_block_q8a *ab = a + i * astride + b;
                __m256i av = _mm256_loadu_si256((const __m256i *)ab->q);
                __m256 p = _mm256_cvtepi32_ps(dot_s8s8_w(q, av, ones16));
                acc[i] = _mm256_fmadd_ps(p, _mm256_set1_ps(d * ab->d), acc[i]);
            }
        }
        break;
    case T_Q4_0:
    case T_Q4_1:
    case T_Q5_0:
    case T_Q5_1: {
        const int has_m = type == T_Q4_1 || type == T_Q5_1;
        const int five = type == T_Q5_0 || type == T_Q5_1;
        const int bs = type == T_Q4_0 ? 18 : type == T_Q4_1 ? 20 : type == T_Q5_0 ? 22 : 24;
        for (int64_t b = 0; b < n / 32; b++, w += bs) {
            const float d = fp16_to_f32(rd16(w));
            float m;
            __m256i u;
            if (five) {
                uint32_t qh; memcpy(&qh, w + (has_m ? 4 : 2), 4);
                u = _mm256_or_si256(nibbles32(w + (has_m ? 8 : 6)), bits32_to_0x10(qh));
                m = has_m ? fp16_to_f32(rd16(w + 2)) : -16.0f * d;
            } else {
                u = nibbles32(w + (has_m ? 4 : 2));
                m = has_m ? fp16_to_f32(rd16(w + 2)) : -8.0f * d;
            }
            for (int i = 0; i < na; i++) {
                const kvant_block_q8a *ab = a + i * astride + b;
                __m256i av = _mm256_loadu_si256((const __m256i *)ab->q);
                __m256 p = _mm256_cvtepi32_ps(dot_u8s8(u, av));
                acc[i] = _mm256_fmadd_ps(p, _mm256_set1_ps(d * ab->d), acc[i]);
                macc[i] += m * ab->s;
            }
        }
        break;
    }
    case T_Q4_K:
    case T_Q5_K: {
        const int five = type == T_Q5_K;
        const int bs = five ? 176 : 144;
        const __m256i lo4 = _mm256_set1_epi8(0x0F), one8 = _mm256_set1_epi8(1);
        for (int64_t b = 0; b < n / 256; b++, w += bs) {
            const float d = fp16_to_f32(rd16(w)), dmin = fp16_to_f32(rd16(w + 2));
            const uint8_t *sc = w + 4;
            const uint8_t *qs = five ? w + 48 : w + 16;
            __m256i qhv = five ? _mm256_loadu_si256((const __m256i *)(w + 16)) : _mm256_setzero_si256();
            for (int j2 = 0; j2 < 4; j2++) {
                const __m256i raw = _mm256_loadu_si256((const __m256i *)(qs + 32 * j2));
                for (int half = 0; half < 2; half++) {
                    const int j = 2 * j2 + half;
                    uint8_t s, mm;
                    scale_min_k4(j, sc, &s, &mm);
                    const float d1 = d * (float)s, m1 = -dmin * (float)mm;
                    __m256i u = half ? _mm256_and_si256(_mm256_srli_epi16(raw, 4), lo4) : _mm256_and_si256(raw, lo4);
                    if (five) {
                        __m256i hb = _mm256_and_si256(_mm256_srli_epi16(qhv, j), one8);
                        u = _mm256_or_si256(u, _mm256_slli_epi16(hb, 4));
                    }
                    for (int i = 0; i < na; i++) {
                        const kvant_block_q8a *ab = a + i * astride + 8 * b + j;
                        __m256i av = _mm256_loadu_si256((const __m256i *)ab->q);
                        __m256 p = _mm256_cvtepi32_ps(dot_u8s8(u, av));
                        acc[i] = _mm256_fmadd_ps(p, _mm256_set1_ps(d1 * ab->d), acc[i]);
                        macc[i] += m1 * ab->s;
                    }
                }
            }
        }
        break;
    }
    case T_Q6_K: {
        const __m256i lo4 = _mm256_set1_epi8(0x0F), three = _mm256_set1_epi8(3), off = _mm256_set1_epi8(32);
        for (int64_t b = 0; b < n / 256; b++, w += 210) {
            const uint8_t *ql = w, *qh = w + 128;
            const int8_t *sc = (const int8_t *)(w + 192);
            const float d = fp16_to_f32(rd16(w + 208));
            for (int h = 0; h < 2; h++) {
                const __m256i qhv = _mm256_loadu_si256((const __m256i *)(qh + 32 * h));
                const __m256i qlA = _mm256_loadu_si256((const __m256i *)(ql + 64 * h));
                const __m256i qlB = _mm256_loadu_si256((const __m256i *)(ql + 64 * h + 32));
                for (int k = 0; k < 4; k++) {
                    const __m256i src = (k & 1) ? qlB : qlA;
                    __m256i lo = (k >= 2) ? _mm256_and_si256(_mm256_srli_epi16(src, 4), lo4) : _mm256_and_si256(src, lo4);
                    __m256i hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qhv, 2 * k), three), 4);
                    __m256i q = _mm256_sub_epi8(_mm256_or_si256(lo, hi), off);
                    const __m256i s16 = _mm256_set_m128i(_mm_set1_epi16(sc[8 * h + 2 * k + 1]),
                                                         _mm_set1_epi16(sc[8 * h + 2 * k]));
                    const int j = 4 * h + k;
                    for (int i = 0; i < na; i++) {
                        const kvant_block_q8a *ab = a + i * astride + 8 * b + j;
                        __m256i av = _mm256_loadu_si256((const __m256i *)ab->q);
                        __m256 p = _mm256_cvtepi32_ps(dot_s8s8_w(q, av, s16));
                        acc[i] = _mm256_fmadd_ps(p, _mm256_set1_ps(d * ab->d), acc[i]);
                    }
                }
            }
        }
        break;
    }
    }
    for (int i = 0; i < na; i++) res[i] = hsum256(acc[i]) + macc[i];
}

/* Row loop for one (type, activation-group size) pair: both are compile-time constants after inlining, so the
 * accumulators stay in registers. */
static inline __attribute__((always_inline))
void matmul_rows(const int type, const int cnt, const uint8_t *wb, size_t row_bytes, int64_t n, int64_t r0, int64_t r1,
                 const kvant_block_q8a *a, int64_t astride, float *out, int64_t out_stride) {
    float res[NA_MAX];
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = wb + (size_t)r * row_bytes;
        _mm_prefetch((const char *)(row + row_bytes), _MM_HINT_T0);
        dot_row_q(type, row, n, a, astride, cnt, res);
        for (int i = 0; i < cnt; i++) out[i * out_stride + r] = res[i];
    }
}

#define KV_DEFINE_ROWS(NAME, TYPE) \
    static void NAME(int cnt, const uint8_t *wb, size_t rb, int64_t n, int64_t r0, int64_t r1, \
                     const kvant_block_q8a *a, int64_t as, float *out, int64_t os) { \
        switch (cnt) { \
        case 1: matmul_rows(TYPE, 1, wb, rb, n, r0, r1, a, as, out, os); break; \
        case 2: matmul_rows(TYPE, 2, wb, rb, n, r0, r1, a, as, out, os); break; \
        case 3: matmul_rows(TYPE, 3, wb, rb, n, r0, r1, a, as, out, os); break; \
        default: matmul_rows(TYPE, 4, wb, rb, n, r0, r1, a, as, out, os); break; \
        } \
    }
KV_DEFINE_ROWS(rows_q8_0, T_Q8_0)
KV_DEFINE_ROWS(rows_q4_0, T_Q4_0)
KV_DEFINE_ROWS(rows_q4_1, T_Q4_1)
KV_DEFINE_ROWS(rows_q5_0, T_Q5_0)
KV_DEFINE_ROWS(rows_q5_1, T_Q5_1)
KV_DEFINE_ROWS(rows_q4_k, T_Q4_K)
KV_DEFINE_ROWS(rows_q5_k, T_Q5_K)
KV_DEFINE_ROWS(rows_q6_k, T_Q6_K)

int kvant_matmul_q8a(int type, const void *w, size_t row_bytes, int64_t n, int64_t row0, int64_t row1,
                     const kvant_block_q8a *a, int64_t na, float *out, int64_t out_stride) {
    if (!kvant_type_has_q8a_path(type) || n % block_elems(type) != 0 || n % 32 != 0) return -1;
    typedef void (*rows_fn)(int, const uint8_t *, size_t, int64_t, int64_t, int64_t, const kvant_block_q8a *, int64_t,
                            float *, int64_t);
    rows_fn fn = type == T_Q8_0 ? rows_q8_0 : type == T_Q4_0 ? rows_q4_0 : type == T_Q4_1 ? rows_q4_1
               : type == T_Q5_0 ? rows_q5_0 : type == T_Q5_1 ? rows_q5_1 : type == T_Q4_K ? rows_q4_k
               : type == T_Q5_K ? rows_q5_k : rows_q6_k;
    const uint8_t *wb = (const uint8_t *)w;
    const int64_t astride = n / 32;
    /* Tile: a few weight rows stay in L1 while every group of up to 4 activation rows passes over them. */
    const int64_t RT = na > NA_MAX ? 8 : (row1 - row0);
    for (int64_t r0 = row0; r0 < row1; r0 += RT) {
        const int64_t r1 = r0 + RT < row1 ? r0 + RT : row1;
        for (int64_t i0 = 0; i0 < na; i0 += NA_MAX) {
            const int cnt = (int)(na - i0 < NA_MAX ? na - i0 : NA_MAX);
            fn(cnt, wb, row_bytes, n, r0, r1, a + i0 * astride, astride, out + i0 * out_stride, out_stride);
        }
    }
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
