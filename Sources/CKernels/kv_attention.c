/* Paged attention over a KV-cache block table for one query position.
 * K/V stay in their storage dtype: fp16/bf16 are widened in registers (F16C / shifts), int8 is
 * widened to fp32 and its scale folded in: score = (q . k_q) * s_k, out = sum p * s_v * v_q.
 * Softmax is computed online per chunk of <= KV_CHUNK tokens (running max and sum, as in
 * FlashAttention, Dao et al. 2022), so no score buffer of the whole context is needed. */
#include <immintrin.h>
#include <math.h>
#include <string.h>
#include "kv_kernels.h"
#include "kv_block_walk.h"

#define KV_CHUNK 32

static inline float kv_f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }
static inline float kv_bf16_to_f32(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline __attribute__((always_inline)) float kv_load1(const uint8_t *p, int i, const int dt) {
    switch (dt) {
    case KV_DT_F32: { float f; memcpy(&f, p + 4 * (size_t)i, 4); return f; }
    case KV_DT_F16: { uint16_t h; memcpy(&h, p + 2 * (size_t)i, 2); return kv_f16_to_f32(h); }
    case KV_DT_BF16: { uint16_t h; memcpy(&h, p + 2 * (size_t)i, 2); return kv_bf16_to_f32(h); }
    default: return (float)((const int8_t *)p)[i];
    }
}

static inline __attribute__((always_inline)) __m256 kv_load8(const uint8_t *p, int i, const int dt) {
    switch (dt) {
    case KV_DT_F32: return _mm256_loadu_ps((const float *)(p + 4 * (size_t)i));
    case KV_DT_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * (size_t)i)));
    case KV_DT_BF16: {
        __m128i x = _mm_loadu_si128((const __m128i *)(p + 2 * (size_t)i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(x), 16));
    }
    default: {
        __m128i x = _mm_loadl_epi64((const __m128i *)(p + (size_t)i));
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(x));
    }
    }
}

static inline float kv_hsum(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 sh = _mm_movehdup_ps(lo);
    __m128 s = _mm_add_ps(lo, sh);
    sh = _mm_movehl_ps(sh, s);
    s = _mm_add_ss(s, sh);
    return _mm_cvtss_f32(s);
}

/* exp(x) for x <= 0 (Cephes expf polynomial, relative error ~1e-7; x < -87.3 gives ~0). */
static inline __m256 kv_exp256(__m256 x) {
    const __m256 one = _mm256_set1_ps(1.0f);
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.33f));
    x = _mm256_min_ps(x, _mm256_set1_ps(88.37f));
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
    __m256 x2 = _mm256_mul_ps(x, x);
    y = _mm256_fmadd_ps(y, x2, _mm256_add_ps(x, one));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

/* NL (1..4) query heads sharing KV head g. acc: [NL, D] scratch, normalized on return. */
static inline __attribute__((always_inline)) void
kv_attend_lanes(const kv_layer_view *vw, const int dt, const int NL, const int g,
                const int first, const int last, const float *const *q, const float scale, float *acc,
                float *ml) {
    const int D = vw->head_dim;
    const size_t eb = dt == KV_DT_F32 ? 4 : (dt == KV_DT_F16 || dt == KV_DT_BF16) ? 2 : 1;
    const size_t row = (size_t)D * eb;
    const int D8 = D & ~7;
    float m[4], l[4];
    float sc[4][KV_CHUNK] __attribute__((aligned(32)));
    float pr[4][KV_CHUNK] __attribute__((aligned(32)));
    float ksv[KV_CHUNK], vsv[KV_CHUNK];
    for (int j = 0; j < NL; j++) { m[j] = -INFINITY; l[j] = 0.0f; }
    memset(sc, 0, sizeof(sc));
    memset(acc, 0, sizeof(float) * (size_t)NL * (size_t)D);

    int t = first;
    while (t <= last) {
        const kv_chunk c = kv_walk_chunk(vw, dt, g, t, last, row, scale, KV_CHUNK, ksv, vsv);
        const int n = c.n;
        const uint8_t *K = c.K, *V = c.V;

        /* scores: one pass over each key row, NL dot products at once */
        for (int i = 0; i < n; i++) {
            const uint8_t *kr = K + (size_t)i * row;
            __m256 a[4], b[4];
            for (int j = 0; j < NL; j++) { a[j] = _mm256_setzero_ps(); b[j] = _mm256_setzero_ps(); }
            int d = 0;
            for (; d + 16 <= D8; d += 16) {
                const __m256 k0 = kv_load8(kr, d, dt), k1 = kv_load8(kr, d + 8, dt);
                for (int j = 0; j < NL; j++) {
                    a[j] = _mm256_fmadd_ps(_mm256_loadu_ps(q[j] + d), k0, a[j]);
                    b[j] = _mm256_fmadd_ps(_mm256_loadu_ps(q[j] + d + 8), k1, b[j]);
                }
            }
            for (; d < D8; d += 8) {
                const __m256 k0 = kv_load8(kr, d, dt);
                for (int j = 0; j < NL; j++) a[j] = _mm256_fmadd_ps(_mm256_loadu_ps(q[j] + d), k0, a[j]);
            }
            float s[4];
            for (int j = 0; j < NL; j++) s[j] = kv_hsum(_mm256_add_ps(a[j], b[j]));
            for (; d < D; d++) {
                const float k = kv_load1(kr, d, dt);
                for (int j = 0; j < NL; j++) s[j] += q[j][d] * k;
            }
            for (int j = 0; j < NL; j++) sc[j][i] = s[j] * ksv[i];
        }

        /* online softmax update */
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
                _mm256_store_ps(&pr[j][i], kv_exp256(_mm256_sub_ps(_mm256_load_ps(&sc[j][i]), vmx)));
            l[j] += kv_probs_fold(pr[j], n, vsv);
            m[j] = mx;
        }

        /* out += sum_i p_i * v_i, one pass over each value column chunk */
        int d = 0;
        for (; d < D8; d += 8) {
            __m256 o[4];
            for (int j = 0; j < NL; j++) o[j] = _mm256_loadu_ps(acc + (size_t)j * D + d);
            for (int i = 0; i < n; i++) {
                const __m256 v = kv_load8(V + (size_t)i * row, d, dt);
                for (int j = 0; j < NL; j++) o[j] = _mm256_fmadd_ps(_mm256_broadcast_ss(&pr[j][i]), v, o[j]);
            }
            for (int j = 0; j < NL; j++) _mm256_storeu_ps(acc + (size_t)j * D + d, o[j]);
        }
        for (; d < D; d++) {
            for (int i = 0; i < n; i++) {
                const float v = kv_load1(V + (size_t)i * row, d, dt);
                for (int j = 0; j < NL; j++) acc[(size_t)j * D + d] += pr[j][i] * v;
            }
        }
        t += n;
    }
    kv_walk_finish(NL, D, m, l, acc, ml);
}

#define KV_LANES_CASE(DT)                                                                  \
    switch (nl) {                                                                          \
    case 1: kv_attend_lanes(vw, DT, 1, g, first, last, q, scale, acc, ml); break;              \
    case 2: kv_attend_lanes(vw, DT, 2, g, first, last, q, scale, acc, ml); break;              \
    case 3: kv_attend_lanes(vw, DT, 3, g, first, last, q, scale, acc, ml); break;              \
    default: kv_attend_lanes(vw, DT, 4, g, first, last, q, scale, acc, ml); break;             \
    }

/* kv_attention512.c */
void kv_attend_group_avx512(const kv_layer_view *vw, int g, int nl, int first, int last,
                            const float *const *q, float scale, float *acc, float *ml);

int32_t kv_cpu_has_avx512(void) {
    static int cached = -1;
    int c = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (c < 0) {
        __builtin_cpu_init();
        c = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
        __atomic_store_n(&cached, c, __ATOMIC_RELAXED);
    }
    return c;
}

/* kv_attention_q4.c */
void kv_attend_group_q4(const kv_layer_view *vw, int g, int nl, int first, int last,
                        const float *const *q, float scale, float *acc, float *ml);

static void kv_attend_group(const kv_layer_view *vw, int g, int nl, int first, int last,
                            const float *const *q, float scale, float *acc, float *ml) {
    if (vw->dtype == KV_DT_Q4) {
        kv_attend_group_q4(vw, g, nl, first, last, q, scale, acc, ml);
        return;
    }
    if (vw->use_avx512 && (vw->head_dim & 15) == 0 && kv_cpu_has_avx512()) {
        kv_attend_group_avx512(vw, g, nl, first, last, q, scale, acc, ml);
        return;
    }
    switch (vw->dtype) {
    case KV_DT_F32: KV_LANES_CASE(KV_DT_F32); break;
    case KV_DT_F16: KV_LANES_CASE(KV_DT_F16); break;
    case KV_DT_BF16: KV_LANES_CASE(KV_DT_BF16); break;
    case KV_DT_I8_STATIC: KV_LANES_CASE(KV_DT_I8_STATIC); break;
    default: KV_LANES_CASE(KV_DT_I8_TOKEN); break;
    }
}

static void kv_attend_impl(const kv_layer_view *vw, int32_t first, int32_t last, const float *query,
                           int32_t num_heads, float scale, float *output, float *m_out, float *l_out) {
    const int H = vw->num_kv_heads, D = vw->head_dim;
    const int G = num_heads / H;
    if (first < 0) first = 0;
    float acc[4 * (size_t)D];
    float ml[8];
    for (int g = 0; g < H; g++) {
        for (int j0 = 0; j0 < G; j0 += 4) {
            const int nl = G - j0 < 4 ? G - j0 : 4;
            const float *q[4];
            for (int j = 0; j < 4; j++) q[j] = query + ((size_t)g * G + j0 + (j < nl ? j : 0)) * D;
            kv_attend_group(vw, g, nl, first, last, q, scale, acc, m_out ? ml : NULL);
            memcpy(output + ((size_t)g * G + j0) * D, acc, sizeof(float) * (size_t)nl * D);
            if (m_out) {
                for (int j = 0; j < nl; j++) { m_out[g * G + j0 + j] = ml[j]; l_out[g * G + j0 + j] = ml[4 + j]; }
            }
        }
    }
}

#include <stdlib.h>
/* GCC's _mm512_reduce_add_ps order on 16 lanes. */
static inline float kv_reduce16(const float *x) {
    float t3[8], t6[4];
    for (int j = 0; j < 8; j++) t3[j] = x[j + 8] + x[j];
    for (int j = 0; j < 4; j++) t6[j] = t3[j + 4] + t3[j];
    return (t6[0] + t6[2]) + (t6[1] + t6[3]);
}
/* ggml_v_expf (AVX-512) on 16 floats. */
__attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma,f16c")))
static void kv_ggml_expf16(const float *x, float *y) {
    const __m512 xv = _mm512_loadu_ps(x);
    const __m512 r = _mm512_set1_ps(0x1.8p23f);
    const __m512 z = _mm512_fmadd_ps(xv, _mm512_set1_ps(0x1.715476p+0f), r);
    const __m512 n = _mm512_sub_ps(z, r);
    const __m512 b = _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.7f7d1cp-20f), _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.62e4p-1f), xv));
    const __mmask16 d = _mm512_cmp_ps_mask(_mm512_abs_ps(n), _mm512_set1_ps(192), _CMP_GT_OQ);
    const __m512 u = _mm512_mul_ps(b, b);
    const __m512 j = _mm512_fmadd_ps(
        _mm512_fmadd_ps(_mm512_fmadd_ps(_mm512_set1_ps(0x1.0e4020p-7f), b, _mm512_set1_ps(0x1.573e2ep-5f)), u,
                        _mm512_fmadd_ps(_mm512_set1_ps(0x1.555e66p-3f), b, _mm512_set1_ps(0x1.fffdb6p-2f))),
        u, _mm512_fmadd_ps(_mm512_set1_ps(0x1.ffffecp-1f), b, _mm512_set1_ps(1.0F)));
    __m512 res = _mm512_scalef_ps(j, n);
    if (!_mm512_kortestz(d, d)) {
        const __m512 alt = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(n, _mm512_setzero_ps(), _CMP_LE_OQ),
                                                _mm512_set1_ps(INFINITY), _mm512_setzero_ps());
        res = _mm512_mask_blend_ps(d, res, alt);
    }
    _mm512_storeu_ps(y, res);
}
/* llama.cpp's CPU attention with flash attention off over an f16 cache (ggml `mul_mat` through llamafile's tinyBLAS
 * and `soft_max_ext`, AVX-512 build), reproduced operation for operation: KQ = f16 K · f16 Q with 16 fp32 lanes over
 * head_dim and GCC's `_mm512_reduce_add_ps` order; softmax with ggml_v_expf per 16 cells (cells = positions, chunks
 * aligned to 16), the sum in double, P = fp16(exp · (float)(1/sum)); KQV = Σ P·V with 16 lanes over cells. The query
 * must already be scaled and rounded to f16 (pass scale 1). Returns 0, or -1 when the buffers cannot be allocated. */
static int kv_attend_ggml_f16(const kv_layer_view *vw, int32_t first, int32_t last, const float *query,
                              int32_t num_heads, float scale, float *output) {
    const int H = vw->num_kv_heads, D = vw->head_dim, B = vw->block_size;
    const int G = num_heads / H;
    const int c0 = first / 16 * 16, c1 = (last / 16 + 1) * 16;
    const int n = c1 - c0;
    const size_t row = (size_t)D * 2;
    float *sc = malloc(sizeof(float) * (size_t)n);
    float *pr = malloc(sizeof(float) * (size_t)n);
    float *lanes = malloc(sizeof(float) * 16 * (size_t)D);
    if (!sc || !pr || !lanes) { free(sc); free(pr); free(lanes); return -1; }
    for (int h = 0; h < num_heads; h++) {
        const int g = h / G;
        const float *q = query + (size_t)h * D;
        float mx = -INFINITY;
        for (int t = c0; t < c1; t++) {
            if (t < first || t > last) { sc[t - c0] = -INFINITY; continue; }
            const int lb = t / B, off = t - lb * B;
            const uint8_t *kr = vw->base + (size_t)vw->block_ids[lb] * vw->block_stride + ((size_t)g * B + off) * row;
            __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
            for (int d = 0; d < D; d += 16) {
                a = _mm256_fmadd_ps(kv_load8(kr, d, KV_DT_F16), _mm256_loadu_ps(q + d), a);
                b = _mm256_fmadd_ps(kv_load8(kr, d + 8, KV_DT_F16), _mm256_loadu_ps(q + d + 8), b);
            }
            float l16[16];
            _mm256_storeu_ps(l16, a);
            _mm256_storeu_ps(l16 + 8, b);
            const float s = kv_reduce16(l16) * scale;
            sc[t - c0] = s;
            mx = s > mx ? s : mx;
        }
        double sum = 0.0;
        for (int i = 0; i < n; i += 16) {
            float xm[16];
            for (int k = 0; k < 16; k++) xm[k] = sc[i + k] - mx;
            kv_ggml_expf16(xm, pr + i);
            sum += (double)kv_reduce16(pr + i);
        }
        const float inv = (float)(1.0 / sum);
        for (int i = 0; i < n; i++) pr[i] = _cvtsh_ss(_cvtss_sh(pr[i] * inv, 0));
        memset(lanes, 0, sizeof(float) * 16 * (size_t)D);
        for (int t = first; t <= last; t++) {
            const int lb = t / B, off = t - lb * B;
            const uint8_t *vr = vw->base + (size_t)vw->block_ids[lb] * vw->block_stride + vw->v_offset + ((size_t)g * B + off) * row;
            float *ln = lanes + (size_t)(t & 15) * D;
            const __m256 p = _mm256_set1_ps(pr[t - c0]);
            for (int d = 0; d < D; d += 8)
                _mm256_storeu_ps(ln + d, _mm256_fmadd_ps(kv_load8(vr, d, KV_DT_F16), p, _mm256_loadu_ps(ln + d)));
        }
        float *o = output + (size_t)h * D;
        for (int d = 0; d < D; d++) {
            float l16[16];
            for (int k = 0; k < 16; k++) l16[k] = lanes[(size_t)k * D + d];
            o[d] = kv_reduce16(l16);
        }
    }
    free(sc); free(pr); free(lanes);
    return 0;
}

int32_t kv_llamacpp_numerics_available(void) { return kv_cpu_has_avx512(); }

void kv_attend(const kv_layer_view *vw, int32_t first, int32_t last,
               const float *query, int32_t num_heads, float scale, float *output) {
    if (vw->numerics == KV_NUMERICS_LLAMACPP && vw->dtype == KV_DT_F16 && (vw->head_dim & 15) == 0 &&
        kv_cpu_has_avx512()) {
        if (kv_attend_ggml_f16(vw, first < 0 ? 0 : first, last, query, num_heads, scale, output) == 0) return;
    }
    kv_attend_impl(vw, first, last, query, num_heads, scale, output, NULL, NULL);
}

void kv_attend_partial(const kv_layer_view *vw, int32_t first, int32_t last, const float *query,
                       int32_t num_heads, float scale, float *acc, float *m, float *l) {
    kv_attend_impl(vw, first, last, query, num_heads, scale, acc, m, l);
}

void kv_attend_merge(int32_t parts, int32_t num_heads, int32_t head_dim, const float *acc,
                     const float *m, const float *l, float *output) {
    const size_t stride = (size_t)num_heads * head_dim;
    for (int h = 0; h < num_heads; h++) {
        float mx = -INFINITY;
        for (int p = 0; p < parts; p++) mx = m[p * num_heads + h] > mx ? m[p * num_heads + h] : mx;
        float w[64], sum = 0.0f;
        for (int p = 0; p < parts; p++) {
            w[p] = expf(m[p * num_heads + h] - mx);
            sum += w[p] * l[p * num_heads + h];
        }
        const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
        float *o = output + (size_t)h * head_dim;
        for (int d = 0; d < head_dim; d++) {
            float a = 0.0f;
            for (int p = 0; p < parts; p++) a += w[p] * acc[p * stride + (size_t)h * head_dim + d];
            o[d] = a * inv;
        }
    }
}
