/* Paged attention over an int4 KV cache (KV_DT_Q4, `int4_pertoken`), read directly from the 4-bit rows
 * (kv_q4.c's formats) with no dequantized copy: AVX2 and AVX-512 variants of kv_attention.c's per-KV-head
 * kernel, same online softmax (FlashAttention style, chunks of <= 32 positions that never cross a block).
 *
 * Scores: K groups of 32 are asymmetric (x^ = m + q d, q in 0..15), so per group
 *   q . k^ = d (q . nibbles) + m (sum of q over the group),
 * the group sums of the query computed once per call. Values: V groups of 64 are symmetric (x^ = (n - 8) d);
 * the softmax weight of a position is multiplied by the group's d and the nibbles, widened to fp32 and
 * re-centred by 8, are accumulated with FMA. head_dim must be a multiple of 64 (checked by the pool). */
#include <immintrin.h>
#include <math.h>
#include <string.h>
#include "kv_kernels.h"

#define KV_Q4_CHUNK 32
#define KV_Q4_MAXD 4096

/* Prefetches KV head g's K and V rows of logical block lb into L2 (_MM_HINT_T1). */
static inline __attribute__((always_inline)) void
kv_q4_prefetch_block(const kv_layer_view *vw, int g, int lb, size_t krow, size_t vrow) {
    const int B = vw->block_size;
    const uint8_t *nb = vw->base + (size_t)vw->block_ids[lb] * vw->block_stride;
    const uint8_t *nk = nb + (size_t)g * B * krow, *nv = nb + vw->v_offset + (size_t)g * B * vrow;
    for (size_t o = 0; o < (size_t)B * krow; o += 64) _mm_prefetch((const char *)(nk + o), _MM_HINT_T1);
    for (size_t o = 0; o < (size_t)B * vrow; o += 64) _mm_prefetch((const char *)(nv + o), _MM_HINT_T1);
}

/* Positions t..(t + n - 1) of KV head g, within one block: their K and V rows. Software prefetch: the blocks of a
 * sequence are scattered (block table), so as each block ends the one KV_Q4_PREFETCH blocks ahead is prefetched
 * into L2 (and at the start of the range the blocks before it). Into L2 rather than L1 (_MM_HINT_T0, one block
 * ahead, before): with the cache cold (as in decode, the weights streamed between layers) 12–17 % less time per call
 * on this machine's Zen 4 (scripts/bench/kv_attention_microbench.c with a cache flush; BENCHMARKS.md). */
#define KV_Q4_PREFETCH 2
static inline __attribute__((always_inline)) int
kv_q4_chunk(const kv_layer_view *vw, int g, int t, int first, int last, size_t krow, size_t vrow, const uint8_t **K,
            const uint8_t **V) {
    const int B = vw->block_size;
    const int lb = t / B, off = t - lb * B;
    int n = B - off;
    if (n > last - t + 1) n = last - t + 1;
    if (n > KV_Q4_CHUNK) n = KV_Q4_CHUNK;
    const uint8_t *blk = vw->base + (size_t)vw->block_ids[lb] * vw->block_stride;
    *K = blk + ((size_t)g * B + off) * krow;
    *V = blk + vw->v_offset + ((size_t)g * B + off) * vrow;
    if (t == first)
        for (int d = 1; d < KV_Q4_PREFETCH && (lb + d) * B <= last; d++) kv_q4_prefetch_block(vw, g, lb + d, krow, vrow);
    if (off + n == B && (lb + KV_Q4_PREFETCH) * B <= last) kv_q4_prefetch_block(vw, g, lb + KV_Q4_PREFETCH, krow, vrow);
    return n;
}

static inline float kv_q4_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* ---------------------------------------------------------------- AVX2 (8 lanes) */

__attribute__((target("avx2,fma,f16c"))) static inline float kv_q4_hsum256(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 sh = _mm_movehdup_ps(lo);
    __m128 s = _mm_add_ps(lo, sh);
    sh = _mm_movehl_ps(sh, s);
    s = _mm_add_ss(s, sh);
    return _mm_cvtss_f32(s);
}

/* exp(x) for x <= 0 (the polynomial of kv_attention.c). */
__attribute__((target("avx2,fma,f16c"))) static inline __m256 kv_q4_exp256(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.33f));
    __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
    fx = _mm256_floor_ps(fx);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

/* 8 bytes -> 8 floats */
__attribute__((target("avx2,fma,f16c"))) static inline __m256 kv_q4_u8x8(__m128i x) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(x));
}

__attribute__((target("avx2,fma,f16c"))) static inline __attribute__((always_inline)) void
kv_q4_lanes(const kv_layer_view *vw, const int NL, const int g, const int first, const int last,
            const float *const *q, const float scale, float *acc, float *ml) {
    const int D = vw->head_dim;
    const int NGK = D / KV_Q4K_GROUP, NGV = D / KV_Q4V_GROUP;
    const size_t krow = (size_t)NGK * KV_Q4K_GROUP_BYTES, vrow = (size_t)NGV * KV_Q4V_GROUP_BYTES;
    const __m128i mask = _mm_set1_epi8(15);
    const __m256 eight = _mm256_set1_ps(8.0f);
    float qsum[4][KV_Q4_MAXD / KV_Q4K_GROUP];
    for (int j = 0; j < NL; j++)
        for (int k = 0; k < NGK; k++) {
            float s = 0.0f;
            for (int i = 0; i < KV_Q4K_GROUP; i++) s += q[j][k * KV_Q4K_GROUP + i];
            qsum[j][k] = s;
        }
    float m[4], l[4];
    float sc[4][KV_Q4_CHUNK] __attribute__((aligned(32)));
    float pr[4][KV_Q4_CHUNK] __attribute__((aligned(32)));
    for (int j = 0; j < NL; j++) { m[j] = -INFINITY; l[j] = 0.0f; }
    memset(sc, 0, sizeof(sc));
    memset(acc, 0, sizeof(float) * (size_t)NL * (size_t)D);

    int t = first;
    while (t <= last) {
        const uint8_t *K, *V;
        const int n = kv_q4_chunk(vw, g, t, first, last, krow, vrow, &K, &V);
        for (int i = 0; i < n; i++) {
            const uint8_t *kr = K + (size_t)i * krow;
            float s[4] = {0, 0, 0, 0};
            __m256 acc8[4];
            for (int j = 0; j < NL; j++) acc8[j] = _mm256_setzero_ps();
            for (int k = 0; k < NGK; k++) {
                const uint8_t *gp = kr + (size_t)k * KV_Q4K_GROUP_BYTES;
                const float d = kv_q4_f16(gp), mn = kv_q4_f16(gp + 2);
                const __m128i b = _mm_loadu_si128((const __m128i *)(gp + 4));
                const __m128i lo = _mm_and_si128(b, mask), hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
                const __m256 k0 = kv_q4_u8x8(lo), k1 = kv_q4_u8x8(_mm_srli_si128(lo, 8));
                const __m256 k2 = kv_q4_u8x8(hi), k3 = kv_q4_u8x8(_mm_srli_si128(hi, 8));
                const __m256 dv = _mm256_set1_ps(d);
                const int base = k * KV_Q4K_GROUP;
                for (int j = 0; j < NL; j++) {
                    __m256 a = _mm256_mul_ps(_mm256_loadu_ps(q[j] + base), k0);
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(q[j] + base + 8), k1, a);
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(q[j] + base + 16), k2, a);
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(q[j] + base + 24), k3, a);
                    acc8[j] = _mm256_fmadd_ps(dv, a, acc8[j]);
                    s[j] += mn * qsum[j][k];
                }
            }
            for (int j = 0; j < NL; j++) sc[j][i] = (kv_q4_hsum256(acc8[j]) + s[j]) * scale;
        }

        const int n8 = (n + 7) & ~7;
        for (int j = 0; j < NL; j++) {
            float mx = m[j];
            for (int i = 0; i < n; i++) mx = sc[j][i] > mx ? sc[j][i] : mx;
            const float corr = m[j] == -INFINITY ? 0.0f : expf(m[j] - mx);
            if (corr != 1.0f) {
                float *aj = acc + (size_t)j * D;
                for (int d = 0; d < D; d++) aj[d] *= corr;
                l[j] *= corr;
            }
            const __m256 vmx = _mm256_set1_ps(mx);
            for (int i = 0; i < n8; i += 8)
                _mm256_store_ps(&pr[j][i], kv_q4_exp256(_mm256_sub_ps(_mm256_load_ps(&sc[j][i]), vmx)));
            float sum = 0.0f;
            for (int i = 0; i < n; i++) sum += pr[j][i];
            l[j] += sum;
            m[j] = mx;
        }

        /* out += sum_i p_i d_i (n_i - 8), 16 columns at a time: slices 0/1 from the low nibbles of bytes
         * 0..15 / 16..31 of a group, slices 2/3 from their high nibbles */
        for (int k = 0; k < NGV; k++) {
            for (int sl = 0; sl < 4; sl++) {
                const int col = k * KV_Q4V_GROUP + sl * 16;
                __m256 o0[4], o1[4];
                for (int j = 0; j < NL; j++) {
                    o0[j] = _mm256_loadu_ps(acc + (size_t)j * D + col);
                    o1[j] = _mm256_loadu_ps(acc + (size_t)j * D + col + 8);
                }
                for (int i = 0; i < n; i++) {
                    const uint8_t *gp = V + (size_t)i * vrow + (size_t)k * KV_Q4V_GROUP_BYTES;
                    const float dv = kv_q4_f16(gp);
                    __m128i b = _mm_loadu_si128((const __m128i *)(gp + 2 + (sl & 1) * 16));
                    b = sl < 2 ? _mm_and_si128(b, mask) : _mm_and_si128(_mm_srli_epi16(b, 4), mask);
                    const __m256 v0 = _mm256_sub_ps(kv_q4_u8x8(b), eight);
                    const __m256 v1 = _mm256_sub_ps(kv_q4_u8x8(_mm_srli_si128(b, 8)), eight);
                    for (int j = 0; j < NL; j++) {
                        const __m256 p = _mm256_set1_ps(pr[j][i] * dv);
                        o0[j] = _mm256_fmadd_ps(p, v0, o0[j]);
                        o1[j] = _mm256_fmadd_ps(p, v1, o1[j]);
                    }
                }
                for (int j = 0; j < NL; j++) {
                    _mm256_storeu_ps(acc + (size_t)j * D + col, o0[j]);
                    _mm256_storeu_ps(acc + (size_t)j * D + col + 8, o1[j]);
                }
            }
        }
        t += n;
    }
    if (ml) {
        for (int j = 0; j < NL; j++) { ml[j] = m[j]; ml[4 + j] = l[j]; }
        return;
    }
    for (int j = 0; j < NL; j++) {
        const float inv = l[j] > 0.0f ? 1.0f / l[j] : 0.0f;
        for (int d = 0; d < D; d++) acc[(size_t)j * D + d] *= inv;
    }
}

/* ---------------------------------------------------------------- AVX-512 (16 lanes) */

#define KV_Q4_T512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")))

KV_Q4_T512 static inline __m512 kv_q4_exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.33f));
    __m512 fx = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f));
    fx = _mm512_roundscale_ps(fx, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), x);
    __m512 y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(fx), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(y, _mm512_castsi512_ps(e));
}

KV_Q4_T512 static inline __m512 kv_q4_u8x16(__m128i x) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(x)); }

/* The group scales (fp16 d, fp16 min) of one K row as fp32, interleaved: dm[2k] = d_k, dm[2k + 1] = min_k. Groups of
 * 20 bytes; eight groups (160 bytes) gathered at a time with one word permute and one fp16 conversion. */
KV_Q4_T512 static inline __attribute__((always_inline)) void kv_q4_kscales(const uint8_t *row, int ngk, float *dm) {
    if (ngk % 8 == 0) {
        /* words 10k, 10k + 1 of groups 0..3 (bytes 0..63) and 4..7 (bytes 80..143, index 32 + ...) */
        const __m512i idx = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                             63, 62, 53, 52, 43, 42, 33, 32, 31, 30, 21, 20, 11, 10, 1, 0);
        for (int b = 0; b < ngk; b += 8) {
            const __m512i lo = _mm512_loadu_si512((const void *)(row + (size_t)b * 20));
            const __m512i hi = _mm512_loadu_si512((const void *)(row + (size_t)b * 20 + 80));
            const __m512i w = _mm512_permutex2var_epi16(lo, idx, hi);
            _mm512_storeu_ps(dm + 2 * b, _mm512_cvtph_ps(_mm512_castsi512_si256(w)));
        }
    } else if (ngk <= 4) {
        /* a row of <= 80 bytes: one (masked) load of at most its first 64 bytes, never past the row */
        const __m512i idx = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                             0, 0, 0, 0, 0, 0, 0, 0, 31, 30, 21, 20, 11, 10, 1, 0);
        const __mmask32 words = ngk == 4 ? (__mmask32)0xffffffffu : (__mmask32)((1u << (ngk * 10)) - 1u);
        const __m512i v = _mm512_maskz_loadu_epi16(words, row);
        const __m512i w = _mm512_permutexvar_epi16(idx, v);
        _mm512_storeu_ps(dm, _mm512_cvtph_ps(_mm512_castsi512_si256(w)));
    } else {
        for (int k = 0; k < ngk; k++) {
            dm[2 * k] = kv_q4_f16(row + (size_t)k * KV_Q4K_GROUP_BYTES);
            dm[2 * k + 1] = kv_q4_f16(row + (size_t)k * KV_Q4K_GROUP_BYTES + 2);
        }
    }
}

/* The sums of the four vectors a0..a3 in lanes 0, 4, 8, 12, each added in _mm512_reduce_add_ps's order (lanes
 * i + (i + 8), then i + (i + 4), then (0 + 2) + (1 + 3)), the four reductions sharing their shuffles and adds. */
KV_Q4_T512 static inline __m128 kv_q4_reduce4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    const __m512 x01 = _mm512_add_ps(_mm512_shuffle_f32x4(a0, a1, _MM_SHUFFLE(1, 0, 1, 0)),
                                     _mm512_shuffle_f32x4(a0, a1, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512 x23 = _mm512_add_ps(_mm512_shuffle_f32x4(a2, a3, _MM_SHUFFLE(1, 0, 1, 0)),
                                     _mm512_shuffle_f32x4(a2, a3, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512 y = _mm512_add_ps(_mm512_shuffle_f32x4(x01, x23, _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_f32x4(x01, x23, _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512 z = _mm512_add_ps(y, _mm512_permute_ps(y, _MM_SHUFFLE(1, 0, 3, 2)));
    const __m512 w = _mm512_add_ps(z, _mm512_permute_ps(z, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0), w));
}

/* Bit for bit the kernel that preceded it (kv_attention_q4_ref.c, tested against it): the same products in the same
 * order. What changed is around them: the group scales of a chunk's rows are converted up front (kv_q4_kscales; V's
 * into dvT) and read back by broadcast loads instead of scalar conversions + register broadcasts in the inner loops;
 * the K minimum terms s_j = sum_k min_k * qsum_jk run for the four query heads in one 4-lane FMA chain; the softmax
 * weight times the V group scale (p_i * d_i) is one 16-lane multiply per group instead of a scalar one per (head,
 * position, group); the chunk's probability sums run as four interleaved chains. */
KV_Q4_T512 static inline __attribute__((always_inline)) void
kv_q4_lanes512(const kv_layer_view *vw, const int NL, const int g, const int first, const int last,
               const float *const *q, const float scale, float *acc, float *ml) {
    const int D = vw->head_dim;
    const int NGK = D / KV_Q4K_GROUP, NGV = D / KV_Q4V_GROUP;
    const size_t krow = (size_t)NGK * KV_Q4K_GROUP_BYTES, vrow = (size_t)NGV * KV_Q4V_GROUP_BYTES;
    const __m128i mask = _mm_set1_epi8(15);
    const __m512 eight = _mm512_set1_ps(8.0f);
    float qsum[4][KV_Q4_MAXD / KV_Q4K_GROUP];
    for (int j = 0; j < NL; j++)
        for (int k = 0; k < NGK; k++) {
            float s = 0.0f;
            for (int i = 0; i < KV_Q4K_GROUP; i++) s += q[j][k * KV_Q4K_GROUP + i];
            qsum[j][k] = s;
        }
    /* qsT[k] = (qsum[0][k], ..., qsum[3][k]); lanes >= NL are 0 and unused */
    float qsT[KV_Q4_MAXD / KV_Q4K_GROUP][4] __attribute__((aligned(16)));
    for (int k = 0; k < NGK; k++)
        for (int j = 0; j < 4; j++) qsT[k][j] = j < NL ? qsum[j][k] : 0.0f;
    float m[4], l[4];
    float sc[4][KV_Q4_CHUNK] __attribute__((aligned(64)));
    float pr[4][KV_Q4_CHUNK] __attribute__((aligned(64)));
    /* per chunk: K scales [position][2 * group] (d, min), V scales [group][position], p * d_V [head][position] */
    float dm[KV_Q4_CHUNK][2 * (KV_Q4_MAXD / KV_Q4K_GROUP)] __attribute__((aligned(64)));
    float dvT[KV_Q4_MAXD / KV_Q4V_GROUP][KV_Q4_CHUNK] __attribute__((aligned(64)));
    float pd[4][KV_Q4_CHUNK] __attribute__((aligned(64)));
    for (int j = 0; j < NL; j++) { m[j] = -INFINITY; l[j] = 0.0f; }
    memset(sc, 0, sizeof(sc));
    memset(pr, 0, sizeof(pr));
    for (int k = 0; k < NGV; k++) memset(dvT[k], 0, sizeof(dvT[k]));
    memset(acc, 0, sizeof(float) * (size_t)NL * (size_t)D);

    int t = first;
    while (t <= last) {
        const uint8_t *K, *V;
        const int n = kv_q4_chunk(vw, g, t, first, last, krow, vrow, &K, &V);
        for (int i = 0; i < n; i++) {
            kv_q4_kscales(K + (size_t)i * krow, NGK, dm[i]);
            const uint8_t *vr = V + (size_t)i * vrow;
            for (int k = 0; k < NGV; k++) dvT[k][i] = kv_q4_f16(vr + (size_t)k * KV_Q4V_GROUP_BYTES);
        }
        for (int i = 0; i < n; i++) {
            const uint8_t *kr = K + (size_t)i * krow;
            const float *dmi = dm[i];
            __m512 a[4];
            for (int j = 0; j < NL; j++) a[j] = _mm512_setzero_ps();
            __m128 s = _mm_setzero_ps();
            for (int k = 0; k < NGK; k++) {
                const uint8_t *gp = kr + (size_t)k * KV_Q4K_GROUP_BYTES;
                const __m128i b = _mm_loadu_si128((const __m128i *)(gp + 4));
                const __m512 k0 = kv_q4_u8x16(_mm_and_si128(b, mask));
                const __m512 k1 = kv_q4_u8x16(_mm_and_si128(_mm_srli_epi16(b, 4), mask));
                const __m512 dv = _mm512_set1_ps(dmi[2 * k]);
                const int base = k * KV_Q4K_GROUP;
                for (int j = 0; j < NL; j++) {
                    const __m512 t2 = _mm512_fmadd_ps(_mm512_loadu_ps(q[j] + base + 16), k1,
                                                      _mm512_mul_ps(_mm512_loadu_ps(q[j] + base), k0));
                    a[j] = _mm512_fmadd_ps(dv, t2, a[j]);
                }
                s = _mm_fmadd_ps(_mm_set1_ps(dmi[2 * k + 1]), _mm_load_ps(qsT[k]), s);
            }
            for (int j = NL; j < 4; j++) a[j] = _mm512_setzero_ps();
            float sv[4] __attribute__((aligned(16)));
            _mm_store_ps(sv, _mm_mul_ps(_mm_add_ps(kv_q4_reduce4(a[0], a[1], a[2], a[3]), s), _mm_set1_ps(scale)));
            for (int j = 0; j < NL; j++) sc[j][i] = sv[j];
        }

        const int n16 = (n + 15) & ~15;
        float sums[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int j = 0; j < NL; j++) {
            float mx = m[j];
            for (int i = 0; i < n; i++) mx = sc[j][i] > mx ? sc[j][i] : mx;
            const float corr = m[j] == -INFINITY ? 0.0f : expf(m[j] - mx);
            if (corr != 1.0f) {
                float *aj = acc + (size_t)j * D;
                const __m512 c = _mm512_set1_ps(corr);
                for (int d = 0; d < D; d += 16) _mm512_storeu_ps(aj + d, _mm512_mul_ps(_mm512_loadu_ps(aj + d), c));
                l[j] *= corr;
            }
            const __m512 vmx = _mm512_set1_ps(mx);
            for (int i = 0; i < n16; i += 16)
                _mm512_store_ps(&pr[j][i], kv_q4_exp512(_mm512_sub_ps(_mm512_load_ps(&sc[j][i]), vmx)));
            m[j] = mx;
        }
        /* each head's sum in position order, the four chains interleaved */
        for (int i = 0; i < n; i++)
            for (int j = 0; j < NL; j++) sums[j] += pr[j][i];
        for (int j = 0; j < NL; j++) l[j] += sums[j];

        /* one V group of 64 columns = 4 zmm per query head (NL <= 4: 16 accumulators) */
        for (int k = 0; k < NGV; k++) {
            const int col = k * KV_Q4V_GROUP;
            for (int j = 0; j < NL; j++)
                for (int i = 0; i < n16; i += 16)
                    _mm512_store_ps(&pd[j][i], _mm512_mul_ps(_mm512_load_ps(&pr[j][i]), _mm512_load_ps(&dvT[k][i])));
            __m512 o[4][4];
            for (int j = 0; j < NL; j++)
                for (int s4 = 0; s4 < 4; s4++) o[j][s4] = _mm512_loadu_ps(acc + (size_t)j * D + col + 16 * s4);
            for (int i = 0; i < n; i++) {
                const uint8_t *gp = V + (size_t)i * vrow + (size_t)k * KV_Q4V_GROUP_BYTES;
                const __m128i b0 = _mm_loadu_si128((const __m128i *)(gp + 2));
                const __m128i b1 = _mm_loadu_si128((const __m128i *)(gp + 18));
                const __m512 v0 = _mm512_sub_ps(kv_q4_u8x16(_mm_and_si128(b0, mask)), eight);
                const __m512 v1 = _mm512_sub_ps(kv_q4_u8x16(_mm_and_si128(b1, mask)), eight);
                const __m512 v2 = _mm512_sub_ps(kv_q4_u8x16(_mm_and_si128(_mm_srli_epi16(b0, 4), mask)), eight);
                const __m512 v3 = _mm512_sub_ps(kv_q4_u8x16(_mm_and_si128(_mm_srli_epi16(b1, 4), mask)), eight);
                for (int j = 0; j < NL; j++) {
                    const __m512 p = _mm512_set1_ps(pd[j][i]);
                    o[j][0] = _mm512_fmadd_ps(p, v0, o[j][0]);
                    o[j][1] = _mm512_fmadd_ps(p, v1, o[j][1]);
                    o[j][2] = _mm512_fmadd_ps(p, v2, o[j][2]);
                    o[j][3] = _mm512_fmadd_ps(p, v3, o[j][3]);
                }
            }
            for (int j = 0; j < NL; j++)
                for (int s4 = 0; s4 < 4; s4++) _mm512_storeu_ps(acc + (size_t)j * D + col + 16 * s4, o[j][s4]);
        }
        t += n;
    }
    if (ml) {
        for (int j = 0; j < NL; j++) { ml[j] = m[j]; ml[4 + j] = l[j]; }
        return;
    }
    for (int j = 0; j < NL; j++) {
        const float inv = l[j] > 0.0f ? 1.0f / l[j] : 0.0f;
        for (int d = 0; d < D; d++) acc[(size_t)j * D + d] *= inv;
    }
}

int32_t kv_cpu_has_avx512(void);

KV_Q4_T512 static void kv_q4_group512(const kv_layer_view *vw, int g, int nl, int first, int last,
                                      const float *const *q, float scale, float *acc, float *ml) {
    switch (nl) {
    case 1: kv_q4_lanes512(vw, 1, g, first, last, q, scale, acc, ml); break;
    case 2: kv_q4_lanes512(vw, 2, g, first, last, q, scale, acc, ml); break;
    case 3: kv_q4_lanes512(vw, 3, g, first, last, q, scale, acc, ml); break;
    default: kv_q4_lanes512(vw, 4, g, first, last, q, scale, acc, ml); break;
    }
}

__attribute__((target("avx2,fma,f16c"))) static void kv_q4_group256(const kv_layer_view *vw, int g, int nl, int first,
                                                                    int last, const float *const *q, float scale,
                                                                    float *acc, float *ml) {
    switch (nl) {
    case 1: kv_q4_lanes(vw, 1, g, first, last, q, scale, acc, ml); break;
    case 2: kv_q4_lanes(vw, 2, g, first, last, q, scale, acc, ml); break;
    case 3: kv_q4_lanes(vw, 3, g, first, last, q, scale, acc, ml); break;
    default: kv_q4_lanes(vw, 4, g, first, last, q, scale, acc, ml); break;
    }
}

/* Called by kv_attention.c's kv_attend_group for KV_DT_Q4 (AVX-512 when allowed and available). */
void kv_attend_group_q4(const kv_layer_view *vw, int g, int nl, int first, int last, const float *const *q,
                        float scale, float *acc, float *ml) {
    if (vw->use_avx512 && kv_cpu_has_avx512()) kv_q4_group512(vw, g, nl, first, last, q, scale, acc, ml);
    else kv_q4_group256(vw, g, nl, first, last, q, scale, acc, ml);
}
