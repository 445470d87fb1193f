/* The AVX-512 int4 attention kernel as it was before the faster one in kv_attention_q4.c (commit 86e533c), kept
 * verbatim as the reference the new kernel must equal bit for bit (same products, same summation order):
 * `kv_attend_group_q4_reference` is called only by the tests (KernelsTests / KVCacheTests "bit-identical") and
 * by scripts/bench/kv_attention_microbench.c. Not used by the pool. */
#include <immintrin.h>
#include <math.h>
#include <string.h>
#include "kv_kernels.h"

#define KV_Q4_CHUNK 32
#define KV_Q4_MAXD 4096

/* Positions t..(t + n - 1) of KV head g, within one block: their K and V rows. */
static inline __attribute__((always_inline)) int
kv_q4r_chunk(const kv_layer_view *vw, int g, int t, int last, size_t krow, size_t vrow, const uint8_t **K,
            const uint8_t **V) {
    const int B = vw->block_size;
    const int lb = t / B, off = t - lb * B;
    int n = B - off;
    if (n > last - t + 1) n = last - t + 1;
    if (n > KV_Q4_CHUNK) n = KV_Q4_CHUNK;
    const uint8_t *blk = vw->base + (size_t)vw->block_ids[lb] * vw->block_stride;
    *K = blk + ((size_t)g * B + off) * krow;
    *V = blk + vw->v_offset + ((size_t)g * B + off) * vrow;
    if (off + n == B && t + n <= last) {
        const uint8_t *nb = vw->base + (size_t)vw->block_ids[lb + 1] * vw->block_stride;
        const uint8_t *nk = nb + (size_t)g * B * krow, *nv = nb + vw->v_offset + (size_t)g * B * vrow;
        for (size_t o = 0; o < (size_t)B * krow; o += 64) _mm_prefetch((const char *)(nk + o), _MM_HINT_T0);
        for (size_t o = 0; o < (size_t)B * vrow; o += 64) _mm_prefetch((const char *)(nv + o), _MM_HINT_T0);
    }
    return n;
}

static inline float kv_q4r_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* ---------------------------------------------------------------- AVX-512 (16 lanes) */

#define KV_Q4R_T512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")))

KV_Q4R_T512 static inline __m512 kv_q4r_exp512(__m512 x) {
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

KV_Q4R_T512 static inline __m512 kv_q4r_u8x16(__m128i x) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(x)); }

KV_Q4R_T512 static inline __attribute__((always_inline)) void
kv_q4r_lanes512(const kv_layer_view *vw, const int NL, const int g, const int first, const int last,
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
    float m[4], l[4];
    float sc[4][KV_Q4_CHUNK] __attribute__((aligned(64)));
    float pr[4][KV_Q4_CHUNK] __attribute__((aligned(64)));
    for (int j = 0; j < NL; j++) { m[j] = -INFINITY; l[j] = 0.0f; }
    memset(sc, 0, sizeof(sc));
    memset(acc, 0, sizeof(float) * (size_t)NL * (size_t)D);

    int t = first;
    while (t <= last) {
        const uint8_t *K, *V;
        const int n = kv_q4r_chunk(vw, g, t, last, krow, vrow, &K, &V);
        for (int i = 0; i < n; i++) {
            const uint8_t *kr = K + (size_t)i * krow;
            __m512 a[4];
            for (int j = 0; j < NL; j++) a[j] = _mm512_setzero_ps();
            float s[4] = {0, 0, 0, 0};
            for (int k = 0; k < NGK; k++) {
                const uint8_t *gp = kr + (size_t)k * KV_Q4K_GROUP_BYTES;
                const float d = kv_q4r_f16(gp), mn = kv_q4r_f16(gp + 2);
                const __m128i b = _mm_loadu_si128((const __m128i *)(gp + 4));
                const __m512 k0 = kv_q4r_u8x16(_mm_and_si128(b, mask));
                const __m512 k1 = kv_q4r_u8x16(_mm_and_si128(_mm_srli_epi16(b, 4), mask));
                const __m512 dv = _mm512_set1_ps(d);
                const int base = k * KV_Q4K_GROUP;
                for (int j = 0; j < NL; j++) {
                    const __m512 t2 = _mm512_fmadd_ps(_mm512_loadu_ps(q[j] + base + 16), k1,
                                                      _mm512_mul_ps(_mm512_loadu_ps(q[j] + base), k0));
                    a[j] = _mm512_fmadd_ps(dv, t2, a[j]);
                    s[j] += mn * qsum[j][k];
                }
            }
            for (int j = 0; j < NL; j++) sc[j][i] = (_mm512_reduce_add_ps(a[j]) + s[j]) * scale;
        }

        const int n16 = (n + 15) & ~15;
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
                _mm512_store_ps(&pr[j][i], kv_q4r_exp512(_mm512_sub_ps(_mm512_load_ps(&sc[j][i]), vmx)));
            float sum = 0.0f;
            for (int i = 0; i < n; i++) sum += pr[j][i];
            l[j] += sum;
            m[j] = mx;
        }

        /* one V group of 64 columns = 4 zmm per query head (NL <= 4: 16 accumulators) */
        for (int k = 0; k < NGV; k++) {
            const int col = k * KV_Q4V_GROUP;
            __m512 o[4][4];
            for (int j = 0; j < NL; j++)
                for (int s4 = 0; s4 < 4; s4++) o[j][s4] = _mm512_loadu_ps(acc + (size_t)j * D + col + 16 * s4);
            for (int i = 0; i < n; i++) {
                const uint8_t *gp = V + (size_t)i * vrow + (size_t)k * KV_Q4V_GROUP_BYTES;
                const float dv = kv_q4r_f16(gp);
                const __m128i b0 = _mm_loadu_si128((const __m128i *)(gp + 2));
                const __m128i b1 = _mm_loadu_si128((const __m128i *)(gp + 18));
                const __m512 v0 = _mm512_sub_ps(kv_q4r_u8x16(_mm_and_si128(b0, mask)), eight);
                const __m512 v1 = _mm512_sub_ps(kv_q4r_u8x16(_mm_and_si128(b1, mask)), eight);
                const __m512 v2 = _mm512_sub_ps(kv_q4r_u8x16(_mm_and_si128(_mm_srli_epi16(b0, 4), mask)), eight);
                const __m512 v3 = _mm512_sub_ps(kv_q4r_u8x16(_mm_and_si128(_mm_srli_epi16(b1, 4), mask)), eight);
                for (int j = 0; j < NL; j++) {
                    const __m512 p = _mm512_set1_ps(pr[j][i] * dv);
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

KV_Q4R_T512 static void kv_q4r_group512(const kv_layer_view *vw, int g, int nl, int first, int last,
                                        const float *const *q, float scale, float *acc, float *ml) {
    switch (nl) {
    case 1: kv_q4r_lanes512(vw, 1, g, first, last, q, scale, acc, ml); break;
    case 2: kv_q4r_lanes512(vw, 2, g, first, last, q, scale, acc, ml); break;
    case 3: kv_q4r_lanes512(vw, 3, g, first, last, q, scale, acc, ml); break;
    default: kv_q4r_lanes512(vw, 4, g, first, last, q, scale, acc, ml); break;
    }
}

void kv_attend_group_q4_reference(const kv_layer_view *vw, int32_t g, int32_t nl, int32_t first, int32_t last,
                                  const float *const *q, float scale, float *acc, float *ml) {
    if (kv_cpu_has_avx512()) kv_q4r_group512(vw, g, nl, first, last, q, scale, acc, ml);
}
