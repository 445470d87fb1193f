/* Q8_0 and Q5_0 weights repacked 16 rows at a time ("x16") for AVX-512 VNNI, and their int8 products.
 *
 * Why: in ggml's layouts a row's block of 32 weights is one vpdpbusd of 8 int32 lanes, and each block then needs its
 * own decode (Q5_0: nibbles and fifth bits), a conversion and an FMA: per block and activation row about 4 vector
 * operations for 32 products, plus the decode. With one activation row that is the cost of decode for the small layer
 * matrices (Gemma 3's Q5_0 products ran at about half the memory bandwidth), and with several rows (a batched decode
 * step, prefill) it is the cost of the step: on the 178 MB Q8_0 output head a step of 8 sequences spent ~4× the
 * memory time in arithmetic. Interleaving 16 rows puts 16 rows' 4-value groups in one 64-byte register: one vpdpbusd
 * makes 64 products for 16 rows, a block (32 values × 16 rows) is 8 of them into one register of 16 int32 sums, and
 * one conversion and one FMA by 16 scales finish the block for 16 rows; the decode is done once per 16 rows and shared
 * by every activation row (the idea of llama.cpp's repacked block_q8_0x4 / Q4_0_8x8 kernels, ggml-cpu/repack.cpp,
 * widened to AVX-512).
 *
 * Layouts, for a matrix of R rows (R % 16 == 0) and n columns (n % 32 == 0), nb = n/32 blocks per row; group g = rows
 * 16g..16g+15 is nb "group blocks", each the size of the 16 rows' blocks (so the matrix keeps its size):
 *   Q8_0x16, 544 bytes:  bytes 0..31 the 16 fp16 scales d (row 16g+i at 2i); bytes 32..543: 8 chunks of 64 bytes,
 *                        chunk j = values 4j..4j+3 of the block for rows 0..15 (row i at 4i), each the unsigned
 *                        byte q + 128 (q xor 0x80).
 *   Q5_0x16, 352 bytes:  bytes 0..31 the scales; bytes 32..287: 4 × 64 bytes of nibbles, byte 4i+k of part p holds
 *                        value 4p+k of row i (low nibble) and value 16+4p+k (high nibble), i.e. chunks p and p+4 (the
 *                        rows' own qs bytes, regrouped); bytes 288..351: 8 masks of 64 bits, bit 4i+k of mask j =
 *                        the fifth bit of value 4j+k of row i. A value decodes to the unsigned u = q + 16 in 0..31.
 *
 * Products (kvant_matmul_q0x16): out[i, r] = Σ_b fp32(d_w[r,b] · d_a[i,b]) · Σ_{k<32} q_w·q_a: the block's int32 sum
 * exact (vpdpbusd of the unsigned weights u = q + K against the signed activations, started from -K·Σq_a, K = 128 or
 * 16), one FMA per block in block order. So each activation row's result is the same whatever the number of rows and
 * threads (batch-invariant: a sequence decodes the same tokens alone or batched, a prompt's rows equal decode's).
 * This rounds once per block where ggml's kernels round 8 lanes of partial sums per block (fp32 rounding only);
 * `lanes` = 1 reproduces ggml's lanes and order exactly, for the .llamaCpp numerics. */
#include "kvant_quants.h"
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

enum { T_Q5_0 = 6, T_Q8_0 = 8 };
/* Activation rows per chunk: x16_group keeps one accumulator per row, 8 of them beside the block's 8 weight
 * registers (x16_chunk_* dispatch on 1..8). */
enum { CH = 8 };
#ifndef PFD
#define PFD 8   /* software prefetch distance, in group blocks */
#endif

static inline int gblock(int type) { return type == T_Q8_0 ? 544 : 352; }
static inline int rblock(int type) { return type == T_Q8_0 ? 34 : 22; }
static inline float f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }

/* Unsigned value of element l of row i in a group block. */
static inline uint8_t x16_u(int type, const uint8_t *o, int i, int l) {
    if (type == T_Q8_0) return o[32 + 64 * (l >> 2) + 4 * i + (l & 3)];
    const int j = l >> 2, k = l & 3;
    const uint8_t nib = (o[32 + 64 * (j & 3) + 4 * i + k] >> (4 * (j >> 2))) & 0x0F;
    uint64_t mask;
    memcpy(&mask, o + 288 + 8 * j, 8);
    return (uint8_t)(nib | (((mask >> (4 * i + k)) & 1) << 4));
}

static inline int type_ok(int type) { return type == T_Q8_0 || type == T_Q5_0; }
static inline int32_t kbias(int type) { return type == T_Q8_0 ? 128 : 16; }

int kvant_repack_q0x16(int type, const void *src, size_t row_bytes, int64_t rows, int64_t n, void *dst) {
    if (!type_ok(type) || rows <= 0 || rows % 16 != 0 || n <= 0 || n % 32 != 0 || row_bytes != (size_t)(n / 32) * rblock(type))
        return -1;
    const int64_t nb = n / 32;
    const size_t group_bytes = 16 * row_bytes;
    uint8_t *tmp = malloc(group_bytes);
    if (!tmp) return -1;
    for (int64_t g = 0; g < rows / 16; g++) {
        memcpy(tmp, (const uint8_t *)src + (size_t)g * group_bytes, group_bytes);
        uint8_t *o0 = (uint8_t *)dst + (size_t)g * group_bytes;
        memset(o0, 0, group_bytes);
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *o = o0 + (size_t)b * gblock(type);
            for (int i = 0; i < 16; i++) {
                const uint8_t *blk = tmp + (size_t)i * row_bytes + (size_t)b * rblock(type);
                o[2 * i] = blk[0];
                o[2 * i + 1] = blk[1];
                if (type == T_Q8_0) {   /* 4 values at a time: chunk j of row i is the row's bytes 4j..4j+3 */
                    for (int j = 0; j < 8; j++) {
                        uint32_t v;
                        memcpy(&v, blk + 2 + 4 * j, 4);
                        v ^= 0x80808080u;
                        memcpy(o + 32 + 64 * j + 4 * i, &v, 4);
                    }
                    continue;
                }
                /* Q5_0: qs byte 4p+k holds values 4p+k and 16+4p+k, as part p wants them; the fifth bits of values
                 * 4j..4j+3 (qh bits 4j..4j+3) become bits 4i..4i+3 of mask j. */
                uint32_t qh;
                memcpy(&qh, blk + 2, 4);
                for (int p = 0; p < 4; p++) memcpy(o + 32 + 64 * p + 4 * i, blk + 6 + 4 * p, 4);
                for (int j = 0; j < 8; j++) o[288 + 8 * j + i / 2] |= (uint8_t)(((qh >> (4 * j)) & 0x0F) << (4 * (i & 1)));
            }
        }
    }
    free(tmp);
    return 0;
}

int kvant_dequantize_row_q0x16(int type, const void *w, int64_t n, int64_t r, float *y) {
    if (!type_ok(type) || n <= 0 || n % 32 != 0 || r < 0) return -1;
    const int64_t nb = n / 32, g = r / 16;
    const int i = (int)(r % 16);
    const uint8_t *base = (const uint8_t *)w + (size_t)g * nb * gblock(type);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *o = base + (size_t)b * gblock(type);
        uint16_t h;
        memcpy(&h, o + 2 * i, 2);
        const float d = f16_to_f32(h);
        for (int l = 0; l < 32; l++) y[32 * b + l] = (float)((int)x16_u(type, o, i, l) - kbias(type)) * d;
    }
    return 0;
}

/* Scalar reference of the products (any CPU): the same exact int32 block sums and the same FMA per block. */
static void matmul_x16_scalar(int type, const uint8_t *w, int64_t n, int64_t g0, int64_t g1, const kvant_block_q8a *a,
                              int64_t na, float *out, int64_t out_stride) {
    const int64_t nb = n / 32;
    for (int64_t g = g0; g < g1; g++)
        for (int i = 0; i < 16; i++)
            for (int64_t m = 0; m < na; m++) {
                float acc = 0;
                for (int64_t b = 0; b < nb; b++) {
                    const uint8_t *o = w + (size_t)(g * nb + b) * gblock(type);
                    uint16_t h;
                    memcpy(&h, o + 2 * i, 2);
                    const kvant_block_q8a *ab = a + m * nb + b;
                    int32_t s = 0;
                    for (int l = 0; l < 32; l++) s += ((int32_t)x16_u(type, o, i, l) - kbias(type)) * ab->q[l];
                    acc = __builtin_fmaf((float)s, f16_to_f32(h) * ab->d, acc);
                }
                out[m * out_stride + 16 * g + i] = acc;
            }
}

#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"))), apply_to = function)

/* The 8 chunks of unsigned values (16 rows × 4 values each) of a group block. */
static inline __attribute__((always_inline)) void x16_decode(const int type, const uint8_t *o, __m512i w[8]) {
    if (type == T_Q8_0) {
        for (int j = 0; j < 8; j++) w[j] = _mm512_loadu_si512((const void *)(o + 32 + 64 * j));
        return;
    }
    const __m512i lo = _mm512_set1_epi8(0x0F), x10 = _mm512_set1_epi8(0x10);
    for (int p = 0; p < 4; p++) {
        const __m512i v = _mm512_loadu_si512((const void *)(o + 32 + 64 * p));
        w[p] = _mm512_and_si512(v, lo);
        w[p + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo);
    }
    for (int j = 0; j < 8; j++) {
        __mmask64 hb;
        memcpy(&hb, o + 288 + 8 * j, 8);
        w[j] = _mm512_mask_add_epi8(w[j], hb, w[j], x10);   /* u = nibble + 16·fifth bit */
    }
}

/* One group of 16 weight rows against M (≤ 8) activation rows: each group block decoded once for the M rows.
 * `aq`: block-major activations (block b: the M rows' 32 int8 values), `st`: per (b, row) the start -K·Σq_a,
 * `da`: per (b, row) d_a. */
static inline __attribute__((always_inline))
void x16_group(const int type, const int M, const uint8_t *wg, int64_t nb, const int8_t *aq, const int32_t *st,
               const float *da, float *out, int64_t out_stride) {
    const int GB = gblock(type);
    __m512 acc[8];
    for (int m = 0; m < M; m++) acc[m] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *o = wg + (size_t)b * GB;
        for (int c = 0; c < GB; c += 256) _mm_prefetch((const char *)(o + PFD * GB + c), _MM_HINT_T0);
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)o));
        __m512i w[8];
        x16_decode(type, o, w);
        const int8_t *ab = aq + (size_t)b * M * 32;
        for (int m = 0; m < M; m++) {
            int32_t q4[8];
            memcpy(q4, ab + 32 * m, 32);
            __m512i s0 = _mm512_set1_epi32(st[b * M + m]);
            __m512i s1 = _mm512_setzero_si512();
            s0 = _mm512_dpbusd_epi32(s0, w[0], _mm512_set1_epi32(q4[0]));
            s1 = _mm512_dpbusd_epi32(s1, w[1], _mm512_set1_epi32(q4[1]));
            s0 = _mm512_dpbusd_epi32(s0, w[2], _mm512_set1_epi32(q4[2]));
            s1 = _mm512_dpbusd_epi32(s1, w[3], _mm512_set1_epi32(q4[3]));
            s0 = _mm512_dpbusd_epi32(s0, w[4], _mm512_set1_epi32(q4[4]));
            s1 = _mm512_dpbusd_epi32(s1, w[5], _mm512_set1_epi32(q4[5]));
            s0 = _mm512_dpbusd_epi32(s0, w[6], _mm512_set1_epi32(q4[6]));
            s1 = _mm512_dpbusd_epi32(s1, w[7], _mm512_set1_epi32(q4[7]));
            const __m512 sc = _mm512_mul_ps(dw, _mm512_set1_ps(da[b * M + m]));
            acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), sc, acc[m]);
        }
    }
    for (int m = 0; m < M; m++) _mm512_storeu_ps(out + m * out_stride, acc[m]);
}

#define X16_CASE(T, M) case M: x16_group(T, M, wg, nb, aq, st, da, out, out_stride); break;
#define X16_CHUNK(NAME, T)                                                                                             \
static void NAME(int M, const uint8_t *wg, int64_t nb, const int8_t *aq, const int32_t *st, const float *da,           \
                 float *out, int64_t out_stride) {                                                                     \
    switch (M) { X16_CASE(T, 1) X16_CASE(T, 2) X16_CASE(T, 3) X16_CASE(T, 4) X16_CASE(T, 5) X16_CASE(T, 6)             \
                 X16_CASE(T, 7) default: X16_CASE(T, 8) }                                                              \
}
X16_CHUNK(x16_chunk_q8_0, T_Q8_0)
X16_CHUNK(x16_chunk_q5_0, T_Q5_0)
#undef X16_CHUNK
#undef X16_CASE

/* Activation rows go in chunks of 8 (8 float accumulators, the 8 weight registers of a block and the int32 sums fit
 * the 32 zmm registers); every chunk passes over a group of 16 weight rows while it is in L1 (a group of 640 columns
 * is 10.9 KB in Q8_0), so the weights stream from memory once per call whatever the number of activation rows. */
static int matmul_x16_avx512(int type, const uint8_t *w, int64_t n, int64_t g0, int64_t g1, const kvant_block_q8a *a,
                             int64_t na, float *out, int64_t out_stride) {
    const int64_t nb = n / 32, chunks = (na + CH - 1) / CH;
    int8_t *aq = aligned_alloc(64, (size_t)(chunks * nb * CH * 32) + 64);
    int32_t *st = malloc(sizeof(int32_t) * (size_t)(chunks * nb * CH));
    float *da = malloc(sizeof(float) * (size_t)(chunks * nb * CH));
    if (!aq || !st || !da) { free(aq); free(st); free(da); return -1; }
    const int32_t K = kbias(type);
    for (int64_t c = 0; c < chunks; c++) {
        const int M = (int)(na - CH * c < CH ? na - CH * c : CH);
        for (int64_t b = 0; b < nb; b++)
            for (int m = 0; m < M; m++) {
                const kvant_block_q8a *ab = a + (CH * c + m) * nb + b;
                const int64_t k = c * nb * CH + b * M + m;
                memcpy(aq + k * 32, ab->q, 32);
                int32_t s = 0;
                for (int j = 0; j < 32; j++) s += ab->q[j];
                st[k] = -K * s;
                da[k] = ab->d;
            }
    }
    const int GB = gblock(type);
    for (int64_t g = g0; g < g1; g++) {
        const uint8_t *wg = w + (size_t)g * nb * GB;
        for (int64_t c = 0; c < chunks; c++) {
            const int M = (int)(na - CH * c < CH ? na - CH * c : CH);
            float *o = out + CH * c * out_stride + 16 * g;
            if (type == T_Q8_0) x16_chunk_q8_0(M, wg, nb, aq + c * nb * CH * 32, st + c * nb * CH, da + c * nb * CH, o, out_stride);
            else x16_chunk_q5_0(M, wg, nb, aq + c * nb * CH * 32, st + c * nb * CH, da + c * nb * CH, o, out_stride);
        }
    }
    free(aq); free(st); free(da);
    return 0;
}

/* ggml's rounding (`lanes`): per block 8 int32 lanes of 4 products each (the lanes of ggml_vec_dot_q*_0_q8_0 and of
 * kvant_matmul_q8a), each lane converted and FMA'd by d_w·d_a into its own accumulator, the 8 accumulators added at the
 * end in hsum256's order ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)): bit-identical to the unpacked matrix's kernels, for the
 * .llamaCpp numerics (about 2.5× the arithmetic of the block sums; activation rows one at a time over L1 weights). */
static inline __attribute__((always_inline))
void x16_lanes(const int type, const uint8_t *w, int64_t nb, int64_t g0, int64_t g1, const kvant_block_q8a *a, int64_t na,
               float *out, int64_t out_stride) {
    const int GB = gblock(type);
    const int32_t K = kbias(type);
    for (int64_t g = g0; g < g1; g++) {
        const uint8_t *wg = w + (size_t)g * nb * GB;
        for (int64_t m = 0; m < na; m++) {
            __m512 acc[8];
            for (int j = 0; j < 8; j++) acc[j] = _mm512_setzero_ps();
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *o = wg + (size_t)b * GB;
                const kvant_block_q8a *ab = a + m * nb + b;
                const __m512 sc = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)o)), _mm512_set1_ps(ab->d));
                __m512i wv[8];
                x16_decode(type, o, wv);
                for (int j = 0; j < 8; j++) {
                    int32_t q4;
                    memcpy(&q4, ab->q + 4 * j, 4);
                    const int32_t st = -K * (ab->q[4 * j] + ab->q[4 * j + 1] + ab->q[4 * j + 2] + ab->q[4 * j + 3]);
                    const __m512i p = _mm512_dpbusd_epi32(_mm512_set1_epi32(st), wv[j], _mm512_set1_epi32(q4));
                    acc[j] = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(p), acc[j]);
                }
            }
            const __m512 u0 = _mm512_add_ps(_mm512_add_ps(acc[0], acc[4]), _mm512_add_ps(acc[2], acc[6]));
            const __m512 u1 = _mm512_add_ps(_mm512_add_ps(acc[1], acc[5]), _mm512_add_ps(acc[3], acc[7]));
            _mm512_storeu_ps(out + m * out_stride + 16 * g, _mm512_add_ps(u0, u1));
        }
    }
}
static void x16_lanes_avx512(int type, const uint8_t *w, int64_t nb, int64_t g0, int64_t g1, const kvant_block_q8a *a,
                             int64_t na, float *out, int64_t out_stride) {
    if (type == T_Q8_0) x16_lanes(T_Q8_0, w, nb, g0, g1, a, na, out, out_stride);
    else x16_lanes(T_Q5_0, w, nb, g0, g1, a, na, out, out_stride);
}
#pragma clang attribute pop

static int x16_avx512(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    }
    return cached;
}

int kvant_q0x16_available(void) { return x16_avx512(); }

int kvant_matmul_q0x16(int type, const void *w, int64_t n, int64_t row0, int64_t row1, const kvant_block_q8a *a,
                       int64_t na, float *out, int64_t out_stride, int lanes) {
    if (!type_ok(type) || n <= 0 || n % 32 != 0 || row0 < 0 || row0 % 16 != 0 || row1 % 16 != 0 || row1 < row0 || na < 0)
        return -1;
    if (x16_avx512()) {
        if (lanes) { x16_lanes_avx512(type, w, n / 32, row0 / 16, row1 / 16, a, na, out, out_stride); return 0; }
        if (matmul_x16_avx512(type, w, n, row0 / 16, row1 / 16, a, na, out, out_stride) == 0) return 0;
    }
    if (lanes) return -1;
    matmul_x16_scalar(type, w, n, row0 / 16, row1 / 16, a, na, out, out_stride);
    return 0;
}
