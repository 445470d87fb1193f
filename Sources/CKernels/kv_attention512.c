/* AVX-512 variant of kv_attention.c's per-KV-head kernel (16 lanes), for head_dim % 16 == 0.
 * Only called after a run-time CPUID check (kv_cpu_has_avx512); the rest of the target stays AVX2. */
#include <immintrin.h>
#include <math.h>
#include <string.h>
#include "kv_kernels.h"
#include "kv_block_walk.h"

#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c"))), apply_to = function)

#define KV_CHUNK 32

static inline __attribute__((always_inline)) __m512 kv_load16(const uint8_t *p, int i, const int dt) {
    switch (dt) {
    case KV_DT_F32: return _mm512_loadu_ps((const float *)(p + 4 * (size_t)i));
    case KV_DT_F16: return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 2 * (size_t)i)));
    case KV_DT_BF16:
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p + 2 * (size_t)i))), 16));
    default:
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + (size_t)i))));
    }
}

/* exp(x) for x <= 0, same polynomial as the AVX2 kernel. */
static inline __m512 kv_exp512(__m512 x) {
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

static inline __attribute__((always_inline)) void
kv_lanes512(const kv_layer_view *vw, const int dt, const int NL, const int g,
            const int first, const int last, const float *const *q, const float scale, float *acc,
                float *ml) {
    const int D = vw->head_dim;
    const size_t eb = dt == KV_DT_F32 ? 4 : (dt == KV_DT_F16 || dt == KV_DT_BF16) ? 2 : 1;
    const size_t row = (size_t)D * eb;
    float m[4], l[4];
    float sc[4][KV_CHUNK] __attribute__((aligned(64)));
    float pr[4][KV_CHUNK] __attribute__((aligned(64)));
    float ksv[KV_CHUNK], vsv[KV_CHUNK];
    for (int j = 0; j < NL; j++) { m[j] = -INFINITY; l[j] = 0.0f; }
    memset(sc, 0, sizeof(sc));
    memset(acc, 0, sizeof(float) * (size_t)NL * (size_t)D);

    int t = first;
    while (t <= last) {
        const kv_chunk c = kv_walk_chunk(vw, dt, g, t, last, row, scale, KV_CHUNK, ksv, vsv);
        const int n = c.n;
        const uint8_t *K = c.K, *V = c.V;

        for (int i = 0; i < n; i++) {
            const uint8_t *kr = K + (size_t)i * row;
            __m512 a[4], b[4];
            for (int j = 0; j < NL; j++) { a[j] = _mm512_setzero_ps(); b[j] = _mm512_setzero_ps(); }
            int d = 0;
            for (; d + 32 <= D; d += 32) {
                const __m512 k0 = kv_load16(kr, d, dt), k1 = kv_load16(kr, d + 16, dt);
                for (int j = 0; j < NL; j++) {
                    a[j] = _mm512_fmadd_ps(_mm512_loadu_ps(q[j] + d), k0, a[j]);
                    b[j] = _mm512_fmadd_ps(_mm512_loadu_ps(q[j] + d + 16), k1, b[j]);
                }
            }
            for (; d < D; d += 16) {
                const __m512 k0 = kv_load16(kr, d, dt);
                for (int j = 0; j < NL; j++) a[j] = _mm512_fmadd_ps(_mm512_loadu_ps(q[j] + d), k0, a[j]);
            }
            for (int j = 0; j < NL; j++) sc[j][i] = _mm512_reduce_add_ps(_mm512_add_ps(a[j], b[j])) * ksv[i];
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
                _mm512_store_ps(&pr[j][i], kv_exp512(_mm512_sub_ps(_mm512_load_ps(&sc[j][i]), vmx)));
            l[j] += kv_probs_fold(pr[j], n, vsv);
            m[j] = mx;
        }

        for (int d = 0; d < D; d += 16) {
            __m512 o[4];
            for (int j = 0; j < NL; j++) o[j] = _mm512_loadu_ps(acc + (size_t)j * D + d);
            for (int i = 0; i < n; i++) {
                const __m512 v = kv_load16(V + (size_t)i * row, d, dt);
                for (int j = 0; j < NL; j++) o[j] = _mm512_fmadd_ps(_mm512_set1_ps(pr[j][i]), v, o[j]);
            }
            for (int j = 0; j < NL; j++) _mm512_storeu_ps(acc + (size_t)j * D + d, o[j]);
        }
        t += n;
    }
    kv_walk_finish(NL, D, m, l, acc, ml);
}

#define KV_LANES512(DT)                                                            \
    switch (nl) {                                                                  \
    case 1: kv_lanes512(vw, DT, 1, g, first, last, q, scale, acc, ml); break;          \
    case 2: kv_lanes512(vw, DT, 2, g, first, last, q, scale, acc, ml); break;          \
    case 3: kv_lanes512(vw, DT, 3, g, first, last, q, scale, acc, ml); break;          \
    default: kv_lanes512(vw, DT, 4, g, first, last, q, scale, acc, ml); break;         \
    }

void kv_attend_group_avx512(const kv_layer_view *vw, int g, int nl, int first, int last,
                            const float *const *q, float scale, float *acc, float *ml) {
    switch (vw->dtype) {
    case KV_DT_F32: KV_LANES512(KV_DT_F32); break;
    case KV_DT_F16: KV_LANES512(KV_DT_F16); break;
    case KV_DT_BF16: KV_LANES512(KV_DT_BF16); break;
    case KV_DT_I8_STATIC: KV_LANES512(KV_DT_I8_STATIC); break;
    default: KV_LANES512(KV_DT_I8_TOKEN); break;
    }
}

#pragma clang attribute pop
