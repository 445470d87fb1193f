/* Vectorized GeGLU / SwiGLU activations (AVX2 + FMA). */
#include "kvant_quants.h"
#include <immintrin.h>
#include <math.h>

/* exp(x) for x in [-88, 88]: 2^k · p(r), r = x - k·ln2, degree-6 polynomial (Cephes expf coefficients). */
static inline __m256 exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
    __m256 k = _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500E-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
    __m256 r2 = _mm256_mul_ps(r, r);
    p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static inline float gelu1(float x) {
    const float c = 0.7978845608028654f;
    return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}

void kvant_geglu(float *gate, const float *up, int64_t n) {
    /* gelu(x) = 0.5·x·(1 + tanh(u)) = x · σ(2u) = x / (1 + exp(-2u)), u = √(2/π)(x + 0.044715x³). */
    const __m256 c2 = _mm256_set1_ps(-2.0f * 0.7978845608028654f), c3 = _mm256_set1_ps(0.044715f), one = _mm256_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(gate + i);
        __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
        __m256 u = _mm256_mul_ps(c2, _mm256_fmadd_ps(c3, x3, x));
        __m256 g = _mm256_div_ps(x, _mm256_add_ps(one, exp256(u)));
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(g, _mm256_loadu_ps(up + i)));
    }
    for (; i < n; i++) gate[i] = gelu1(gate[i]) * up[i];
}

void kvant_swiglu(float *gate, const float *up, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.0f), neg = _mm256_set1_ps(-0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(gate + i);
        __m256 s = _mm256_div_ps(x, _mm256_add_ps(one, exp256(_mm256_xor_ps(x, neg))));
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
    }
    for (; i < n; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

/* ---------------------------------------------------------------- ggml's fp16 GELU table (GGML_GELU_FP16) */
#include <pthread.h>

/* One spare entry: the 8-lane gather reads 4 bytes at entry i. */
static uint16_t gelu_table_f16[(1 << 16) + 2];
static pthread_once_t gelu_table_once = PTHREAD_ONCE_INIT;

/* ggml_gelu_f32 as GCC compiles it (the inner x·x·0.044715 + 1 contracted to one FMA). */
static float gelu_ggml_f32(float x) {
    return 0.5f * x * (1.0f + tanhf(0.79788456080286535587989211986876f * x * fmaf(0.044715f * x, x, 1.0f)));
}

static void gelu_table_init(void) {
    for (int i = 0; i < (1 << 16); i++) {
        const float f = _cvtsh_ss((unsigned short)i);
        gelu_table_f16[i] = _cvtss_sh(gelu_ggml_f32(f), 0);
    }
}

void kvant_geglu_f16_table(float *gate, const float *up, int64_t n) {
    pthread_once(&gelu_table_once, gelu_table_init);
    const __m256 lo = _mm256_set1_ps(-10.0f), hi = _mm256_set1_ps(10.0f);
    const __m256i mask16 = _mm256_set1_epi32(0xFFFF);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(gate + i), u = _mm256_loadu_ps(up + i);
        const __m256i idx = _mm256_cvtepu16_epi32(_mm256_cvtps_ph(x, 0));
        const __m256i t = _mm256_and_si256(_mm256_i32gather_epi32((const int *)gelu_table_f16, idx, 2), mask16);
        const __m128i t16 = _mm_packus_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
        __m256 y = _mm256_mul_ps(_mm256_cvtph_ps(t16), u);
        y = _mm256_blendv_ps(y, _mm256_mul_ps(x, u), _mm256_cmp_ps(x, hi, _CMP_GE_OQ));
        y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LE_OQ));
        _mm256_storeu_ps(gate + i, y);
    }
    for (; i < n; i++) {
        const float x = gate[i];
        if (x <= -10.0f) gate[i] = 0.0f;
        else if (x >= 10.0f) gate[i] = x * up[i];
        else gate[i] = _cvtsh_ss(gelu_table_f16[_cvtss_sh(x, 0)]) * up[i];
    }
}

void kvant_round_f16(float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), 0);
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(h));
    }
    for (; i < n; i++) x[i] = _cvtsh_ss(_cvtss_sh(x[i], 0));
}
