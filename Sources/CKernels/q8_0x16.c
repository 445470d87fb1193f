/* Q8_0 weights repacked 16 rows at a time ("Q8_0x16") for AVX-512 VNNI, and their int8 products.
 *
 * Why: in ggml's Q8_0 layout a row's block of 32 weights is one vpdpbusd of 8 int32 lanes, and each block then
 * needs a conversion and an FMA of its own: per block and activation row, about 4 vector operations for 32 products.
 * That is fine for one activation row (decode is bound by the memory stream) but it is the cost of a batched decode
 * step and of prefill: on Gemma 3's 178 MB Q8_0 output head a step of 8 sequences spent ~4× the memory time in
 * arithmetic. Interleaving 16 rows puts 16 rows' 4-value groups in one 64-byte register: one vpdpbusd makes 64
 * products for 16 rows, a block (32 values × 16 rows) is 8 of them into one register of 16 int32 sums, and one
 * conversion and one FMA by 16 scales finish the block for 16 rows (the layout of llama.cpp's repacked
 * block_q8_0x4 / Q4_0_8x8 kernels, ggml-cpu/repack.cpp, widened to AVX-512).
 *
 * Layout of a matrix of R rows (R % 16 == 0) and n columns (n % 32 == 0), nb = n/32 blocks per row, group g = rows
 * 16g..16g+15, in groups of nb "group blocks" of 544 bytes (the size of 16 Q8_0 blocks: the matrix keeps its size):
 *   bytes   0..31:  the 16 rows' fp16 scales d (row 16g+i at 2i), as in the rows' Q8_0 blocks;
 *   bytes 32..543:  8 chunks of 64 bytes; chunk j holds values 4j..4j+3 of the block for rows 0..15 (row i at 4i),
 *                   each stored as the unsigned byte q + 128 (q xor 0x80).
 *
 * Products (kvant_matmul_q8_0x16): out[i, r] = Σ_b fp32(d_w[r,b] · d_a[i,b]) · Σ_{k<32} q_w·q_a, the block's int32 sum
 * exact (vpdpbusd of the unsigned weights against the signed activations, started from -128·Σq_a), one FMA per block in
 * block order. So each activation row's result is the same whatever the number of rows and threads (batch-invariant:
 * a sequence decodes the same tokens alone or batched). The per-block float rounding differs from ggml's Q8_0 kernel
 * (which adds 8 lanes of partial sums per block), by fp32 rounding only: one rounding per block instead of eight. */
#include "kvant_quants.h"
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

enum { X16_GROUP_BLOCK = 544 };
#ifndef PFD
#define PFD 8   /* software prefetch distance, in group blocks (4.3 KB) */
#endif

static inline float f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }

int kvant_repack_q8_0x16(const void *src, size_t row_bytes, int64_t rows, int64_t n, void *dst) {
    if (rows <= 0 || rows % 16 != 0 || n <= 0 || n % 32 != 0 || row_bytes != (size_t)(n / 32) * 34) return -1;
    const int64_t nb = n / 32;
    const size_t group_bytes = 16 * row_bytes;
    uint8_t *tmp = malloc(group_bytes);
    if (!tmp) return -1;
    for (int64_t g = 0; g < rows / 16; g++) {
        memcpy(tmp, (const uint8_t *)src + (size_t)g * group_bytes, group_bytes);
        uint8_t *o0 = (uint8_t *)dst + (size_t)g * group_bytes;
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *o = o0 + (size_t)b * X16_GROUP_BLOCK;
            for (int i = 0; i < 16; i++) {
                const uint8_t *blk = tmp + (size_t)i * row_bytes + (size_t)b * 34;
                o[2 * i] = blk[0];
                o[2 * i + 1] = blk[1];
                for (int j = 0; j < 8; j++)
                    for (int k = 0; k < 4; k++) o[32 + 64 * j + 4 * i + k] = blk[2 + 4 * j + k] ^ 0x80;
            }
        }
    }
    free(tmp);
    return 0;
}

int kvant_dequantize_row_q8_0x16(const void *w, int64_t n, int64_t r, float *y) {
    if (n <= 0 || n % 32 != 0 || r < 0) return -1;
    const int64_t nb = n / 32, g = r / 16;
    const int i = (int)(r % 16);
    const uint8_t *base = (const uint8_t *)w + (size_t)g * nb * X16_GROUP_BLOCK;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *o = base + (size_t)b * X16_GROUP_BLOCK;
        uint16_t h;
        memcpy(&h, o + 2 * i, 2);
        const float d = f16_to_f32(h);
        for (int j = 0; j < 8; j++)
            for (int k = 0; k < 4; k++) y[32 * b + 4 * j + k] = (float)(int8_t)(o[32 + 64 * j + 4 * i + k] ^ 0x80) * d;
    }
    return 0;
}

/* Scalar reference of the products (any CPU): the same exact int32 block sums and the same FMA per block. */
static void matmul_x16_scalar(const uint8_t *w, int64_t n, int64_t g0, int64_t g1, const kvant_block_q8a *a, int64_t na,
                              float *out, int64_t out_stride) {
    const int64_t nb = n / 32;
    for (int64_t g = g0; g < g1; g++)
        for (int i = 0; i < 16; i++)
            for (int64_t m = 0; m < na; m++) {
                float acc = 0;
                for (int64_t b = 0; b < nb; b++) {
                    const uint8_t *o = w + (size_t)(g * nb + b) * X16_GROUP_BLOCK;
                    uint16_t h;
                    memcpy(&h, o + 2 * i, 2);
                    const kvant_block_q8a *ab = a + m * nb + b;
                    int32_t s = 0;
                    for (int j = 0; j < 8; j++)
                        for (int k = 0; k < 4; k++) s += (int32_t)(int8_t)(o[32 + 64 * j + 4 * i + k] ^ 0x80) * ab->q[4 * j + k];
                    acc = __builtin_fmaf((float)s, f16_to_f32(h) * ab->d, acc);
                }
                out[m * out_stride + 16 * g + i] = acc;
            }
}

#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"))), apply_to = function)

/* One group of 16 weight rows against M activation rows, streaming the group's blocks once for all M rows.
 * `aq`: block-major activations (block b: the M rows' 32 int8 values), `st`: per (b, row) the start -128·Σq_a,
 * `da`: per (b, row) d_a. */
static inline __attribute__((always_inline))
void x16_group(const int M, const uint8_t *wg, int64_t nb, const int8_t *aq, const int32_t *st, const float *da,
               float *out, int64_t out_stride) {
    __m512 acc[8];
    for (int m = 0; m < M; m++) acc[m] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *o = wg + (size_t)b * X16_GROUP_BLOCK;
        _mm_prefetch((const char *)(o + PFD * X16_GROUP_BLOCK), _MM_HINT_T0);
        _mm_prefetch((const char *)(o + PFD * X16_GROUP_BLOCK + 256), _MM_HINT_T0);
        _mm_prefetch((const char *)(o + PFD * X16_GROUP_BLOCK + 512), _MM_HINT_T0);
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)o));
        __m512i w[8];
        for (int j = 0; j < 8; j++) w[j] = _mm512_loadu_si512((const void *)(o + 32 + 64 * j));
        const int8_t *ab = aq + (size_t)b * M * 32;
        for (int m = 0; m < M; m++) {
            const int8_t *q = ab + 32 * m;
            int32_t q4[8];
            memcpy(q4, q, 32);
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

#define X16_CASE(M) case M: x16_group(M, wg, nb, aq, st, da, out, out_stride); break;
static void x16_chunk(int M, const uint8_t *wg, int64_t nb, const int8_t *aq, const int32_t *st, const float *da,
                      float *out, int64_t out_stride) {
    switch (M) { X16_CASE(1) X16_CASE(2) X16_CASE(3) X16_CASE(4) X16_CASE(5) X16_CASE(6) X16_CASE(7) default: X16_CASE(8) }
}
#undef X16_CASE

/* Activation rows go in chunks of 8 (8 float accumulators, the 8 weight registers of a block and the int32 sums fit
 * the 32 zmm registers); every chunk passes over a group of 16 weight rows while it is in L1 (a group of 640 columns
 * is 10.9 KB), so the weights stream from memory once per call whatever the number of activation rows. */
static int matmul_x16_avx512(const uint8_t *w, int64_t n, int64_t g0, int64_t g1, const kvant_block_q8a *a, int64_t na,
                             float *out, int64_t out_stride) {
    const int64_t nb = n / 32, chunks = (na + 7) / 8;
    int8_t *aq = aligned_alloc(64, (size_t)(chunks * nb * 8 * 32) + 64);
    int32_t *st = malloc(sizeof(int32_t) * (size_t)(chunks * nb * 8));
    float *da = malloc(sizeof(float) * (size_t)(chunks * nb * 8));
    if (!aq || !st || !da) { free(aq); free(st); free(da); return -1; }
    for (int64_t c = 0; c < chunks; c++) {
        const int M = (int)(na - 8 * c < 8 ? na - 8 * c : 8);
        for (int64_t b = 0; b < nb; b++)
            for (int m = 0; m < M; m++) {
                const kvant_block_q8a *ab = a + (8 * c + m) * nb + b;
                const int64_t kk = c * nb * 8 + b * M + m;
                memcpy(aq + kk * 32, ab->q, 32);
                int32_t s = 0;
                for (int j = 0; j < 32; j++) s += ab->q[j];
                st[kk] = -128 * s;
                da[kk] = ab->d;
            }
    }
    for (int64_t g = g0; g < g1; g++) {
        const uint8_t *wg = w + (size_t)g * nb * X16_GROUP_BLOCK;
        for (int64_t c = 0; c < chunks; c++) {
            const int M = (int)(na - 8 * c < 8 ? na - 8 * c : 8);
            x16_chunk(M, wg, nb, aq + c * nb * 8 * 32, st + c * nb * 8, da + c * nb * 8, out + 8 * c * out_stride + 16 * g,
                      out_stride);
        }
    }
    free(aq); free(st); free(da);
    return 0;
}

/* ggml's rounding (`lanes`): per block 8 int32 lanes of 4 products each (the lanes of ggml_vec_dot_q8_0_q8_0 and of
 * kvant_matmul_q8a), each lane converted and FMA'd by d_w·d_a into its own accumulator, the 8 accumulators added at the
 * end in hsum256's order ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)): bit-identical to the unpacked matrix's kernels, for the
 * .llamaCpp numerics (about 2.5× the arithmetic of the block sums; activation rows one at a time over L1 weights). */
static void x16_lanes_avx512(const uint8_t *w, int64_t nb, int64_t g0, int64_t g1, const kvant_block_q8a *a, int64_t na,
                             float *out, int64_t out_stride) {
    for (int64_t g = g0; g < g1; g++) {
        const uint8_t *wg = w + (size_t)g * nb * X16_GROUP_BLOCK;
        for (int64_t m = 0; m < na; m++) {
            __m512 acc[8];
            for (int j = 0; j < 8; j++) acc[j] = _mm512_setzero_ps();
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *o = wg + (size_t)b * X16_GROUP_BLOCK;
                const kvant_block_q8a *ab = a + m * nb + b;
                const __m512 sc = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)o)), _mm512_set1_ps(ab->d));
                for (int j = 0; j < 8; j++) {
                    int32_t q4;
                    memcpy(&q4, ab->q + 4 * j, 4);
                    const int32_t st = -128 * (ab->q[4 * j] + ab->q[4 * j + 1] + ab->q[4 * j + 2] + ab->q[4 * j + 3]);
                    const __m512i p = _mm512_dpbusd_epi32(_mm512_set1_epi32(st), _mm512_loadu_si512((const void *)(o + 32 + 64 * j)),
                                                          _mm512_set1_epi32(q4));
                    acc[j] = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(p), acc[j]);
                }
            }
            const __m512 u0 = _mm512_add_ps(_mm512_add_ps(acc[0], acc[4]), _mm512_add_ps(acc[2], acc[6]));
            const __m512 u1 = _mm512_add_ps(_mm512_add_ps(acc[1], acc[5]), _mm512_add_ps(acc[3], acc[7]));
            _mm512_storeu_ps(out + m * out_stride + 16 * g, _mm512_add_ps(u0, u1));
        }
    }
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

int kvant_q8_0x16_available(void) { return x16_avx512(); }

int kvant_matmul_q8_0x16(const void *w, int64_t n, int64_t row0, int64_t row1, const kvant_block_q8a *a, int64_t na,
                         float *out, int64_t out_stride, int lanes) {
    if (n <= 0 || n % 32 != 0 || row0 < 0 || row0 % 16 != 0 || row1 % 16 != 0 || row1 < row0 || na < 0) return -1;
    if (x16_avx512()) {
        if (lanes) { x16_lanes_avx512(w, n / 32, row0 / 16, row1 / 16, a, na, out, out_stride); return 0; }
        if (matmul_x16_avx512(w, n, row0 / 16, row1 / 16, a, na, out, out_stride) == 0) return 0;
    }
    if (lanes) return -1;
    matmul_x16_scalar(w, n, row0 / 16, row1 / 16, a, na, out, out_stride);
    return 0;
}
