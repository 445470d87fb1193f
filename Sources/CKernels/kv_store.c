/* Storing and reading back one row of KV-cache values in the cache dtype, amax, atomics. */
#include <immintrin.h>
#include <math.h>
#include <string.h>
#include "kv_kernels.h"

static inline uint16_t kv_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                            /* nearest even */
    return (uint16_t)(u >> 16);
}

int32_t kv_store_row(int32_t dtype, const float *src, void *dst, int32_t n, float s) {
    int i = 0;
    switch (dtype) {
    case KV_DT_F32:
        memcpy(dst, src, sizeof(float) * (size_t)n);
        return 0;
    case KV_DT_F16: {
        uint16_t *h = (uint16_t *)dst;
        for (; i + 8 <= n; i += 8)
            _mm_storeu_si128((__m128i *)(h + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
        for (; i < n; i++) h[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
        return 0;
    }
    case KV_DT_BF16: {
        uint16_t *h = (uint16_t *)dst;
        for (; i < n; i++) h[i] = kv_f32_to_bf16(src[i]);
        return 0;
    }
    default: {
        int8_t *q = (int8_t *)dst;
        if (!(s > 0.0f)) { memset(q, 0, (size_t)n); return 0; }
        int32_t clipped = 0;
        const __m256 vs = _mm256_set1_ps(s), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
        const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
        for (; i + 8 <= n; i += 8) {
            __m256 r = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(src + i), vs),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            clipped += __builtin_popcount((unsigned)_mm256_movemask_ps(
                _mm256_cmp_ps(_mm256_and_ps(r, absmask), hi, _CMP_GT_OQ)));
            r = _mm256_min_ps(_mm256_max_ps(r, lo), hi); /* NaN -> -127 (max returns the 2nd operand) */
            __m256i v = _mm256_cvtps_epi32(r);
            __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
            _mm_storel_epi64((__m128i *)(q + i), _mm_packs_epi16(p16, p16));
        }
        for (; i < n; i++) {
            float r = nearbyintf(src[i] / s);
            if (fabsf(r) > 127.0f) clipped++;
            r = r > -127.0f ? r : -127.0f;
            r = r < 127.0f ? r : 127.0f;
            q[i] = (int8_t)r;
        }
        return clipped;
    }
    }
}

void kv_load_row(int32_t dtype, const void *src, float *dst, int32_t n, float s) {
    switch (dtype) {
    case KV_DT_F32:
        memcpy(dst, src, sizeof(float) * (size_t)n);
        return;
    case KV_DT_F16: {
        const uint16_t *h = (const uint16_t *)src;
        for (int i = 0; i < n; i++) dst[i] = _cvtsh_ss(h[i]);
        return;
    }
    case KV_DT_BF16: {
        const uint16_t *h = (const uint16_t *)src;
        for (int i = 0; i < n; i++) {
            uint32_t u = (uint32_t)h[i] << 16;
            memcpy(dst + i, &u, 4);
        }
        return;
    }
    default: {
        const int8_t *q = (const int8_t *)src;
        for (int i = 0; i < n; i++) dst[i] = (float)q[i] * s;
        return;
    }
    }
}

float kv_amax(const float *x, int32_t n) {
    float m = 0.0f;
    for (int i = 0; i < n; i++) {
        const float a = fabsf(x[i]);
        m = a > m ? a : m;
    }
    return m;
}

void kv_atomic_max_f32(float *slot, float v) {
    if (!(v >= 0.0f)) return;
    uint32_t nv;
    memcpy(&nv, &v, 4);
    uint32_t *p = (uint32_t *)slot;
    uint32_t cur = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (nv > cur) {
        if (__atomic_compare_exchange_n(p, &cur, nv, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) break;
    }
}

void kv_atomic_add_i64(int64_t *slot, int64_t v) { __atomic_fetch_add(slot, v, __ATOMIC_RELAXED); }

int32_t kv_hadamard_group(int32_t head_dim) { return head_dim > 0 ? (head_dim & -head_dim) : 1; }

/* One group of g >= 8 values: butterflies of span 1, 2, 4 inside each 8-float vector by lane permutes, the
 * wider spans between vectors, then the 1/sqrt(g) normalization. */
static void kv_hadamard_group_avx2(float *y, int32_t g, float norm) {
    for (int32_t i = 0; i < g; i += 8) {
        __m256 v = _mm256_loadu_ps(y + i), p;
        p = _mm256_permute_ps(v, 0xB1);                                             /* span 1: (1,0,3,2) */
        v = _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), 0xAA);
        p = _mm256_permute_ps(v, 0x4E);                                             /* span 2: (2,3,0,1) */
        v = _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), 0xCC);
        p = _mm256_permute2f128_ps(v, v, 1);                                        /* span 4: swap halves */
        v = _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), 0xF0);
        _mm256_storeu_ps(y + i, v);
    }
    for (int32_t h = 8; h < g; h <<= 1)
        for (int32_t i = 0; i < g; i += 2 * h)
            for (int32_t j = i; j < i + h; j += 8) {
                const __m256 a = _mm256_loadu_ps(y + j), b = _mm256_loadu_ps(y + j + h);
                _mm256_storeu_ps(y + j, _mm256_add_ps(a, b));
                _mm256_storeu_ps(y + j + h, _mm256_sub_ps(a, b));
            }
    const __m256 vn = _mm256_set1_ps(norm);
    for (int32_t i = 0; i < g; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(y + i), vn));
}

void kv_hadamard(float *x, int32_t n, int32_t g) {
    if (g <= 1) return;
    const float norm = 1.0f / sqrtf((float)g);
    if (g >= 8) {
        for (int32_t base = 0; base + g <= n; base += g) kv_hadamard_group_avx2(x + base, g, norm);
        return;
    }
    for (int32_t base = 0; base + g <= n; base += g) {
        float *y = x + base;
        for (int32_t h = 1; h < g; h <<= 1)
            for (int32_t i = 0; i < g; i += 2 * h)
                for (int32_t j = i; j < i + h; j++) {
                    const float a = y[j], b = y[j + h];
                    y[j] = a + b;
                    y[j + h] = a - b;
                }
        for (int32_t j = 0; j < g; j++) y[j] *= norm;
    }
}
