/* The block walk (and the softmax bookkeeping) shared by the AVX2 (kv_attention.c) and AVX-512 (kv_attention512.c) attention
 * kernels: positions first..last of one KV head are visited in chunks that never cross a block
 * (blocks are not contiguous in memory) and hold at most KV_CHUNK positions. Included by both after
 * their target attributes, so it compiles for each instruction set. */
#ifndef KV_BLOCK_WALK_H
#define KV_BLOCK_WALK_H

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include "kv_kernels.h"

/* One chunk: n positions starting at position t, K and V rows of KV head g ([n, head_dim] each,
 * `row` bytes apart). */
typedef struct {
    int n;
    const uint8_t *K;
    const uint8_t *V;
} kv_chunk;

/* Locates the chunk starting at position t (t <= last) of KV head g, prefetches the next block's K
 * and V rows of the head when the walk continues there, and fills the per-position factors:
 * ksv[i] = the K scale of position t+i times `scale` (the softmax scale), vsv[i] = its V scale
 * (int8_pertoken: the per-token scales of the block; static int8: the block's epoch scales of head g;
 * float dtypes: scale and 1). `chunk_max` caps n (the kernel's scratch size). */
static inline __attribute__((always_inline)) kv_chunk
kv_walk_chunk(const kv_layer_view *vw, const int dt, const int g, const int t, const int last, const size_t row,
              const float scale, const int chunk_max, float *ksv, float *vsv) {
    const int B = vw->block_size, H = vw->num_kv_heads;
    const int lb = t / B, off = t - lb * B;
    int n = B - off;
    if (n > last - t + 1) n = last - t + 1;
    if (n > chunk_max) n = chunk_max;
    const int32_t bid = vw->block_ids[lb];
    const uint8_t *blk = vw->base + (size_t)bid * vw->block_stride;
    kv_chunk c;
    c.n = n;
    c.K = blk + ((size_t)g * B + off) * row;
    c.V = blk + vw->v_offset + ((size_t)g * B + off) * row;
    if (off + n == B && t + n <= last) {
        /* next block: prefetch its K and V rows of this head */
        const uint8_t *nb = vw->base + (size_t)vw->block_ids[lb + 1] * vw->block_stride + (size_t)g * B * row;
        const size_t bytes = (size_t)B * row;
        for (size_t o = 0; o < bytes; o += 64) {
            _mm_prefetch((const char *)(nb + o), _MM_HINT_T0);
            _mm_prefetch((const char *)(nb + vw->v_offset + o), _MM_HINT_T0);
        }
    }
    if (dt == KV_DT_I8_TOKEN) {
        const float *ks = (const float *)(blk + vw->ks_offset) + (size_t)g * B + off;
        const float *vs = (const float *)(blk + vw->vs_offset) + (size_t)g * B + off;
        for (int i = 0; i < n; i++) { ksv[i] = ks[i] * scale; vsv[i] = vs[i]; }
    } else if (dt == KV_DT_I8_STATIC) {
        const float s = vw->static_scales[(size_t)bid * H + g], sv = vw->static_v_scales[(size_t)bid * H + g];
        for (int i = 0; i < n; i++) { ksv[i] = s * scale; vsv[i] = sv; }
    } else {
        for (int i = 0; i < n; i++) { ksv[i] = scale; vsv[i] = 1.0f; }
    }
    return c;
}

/* The chunk's probabilities p = exp(score - max) are final for the softmax sum; returns their sum and
 * folds each position's V scale into them (pr[i] *= vsv[i]) for the weighted sum of V. */
static inline __attribute__((always_inline)) float kv_probs_fold(float *pr, const int n, const float *vsv) {
    float sum = 0.0f;
    for (int i = 0; i < n; i++) { sum += pr[i]; pr[i] *= vsv[i]; }
    return sum;
}

/* End of the walk for NL query heads: with `ml`, a partial result for split-K (acc left unnormalized,
 * ml[j] = running max, ml[4 + j] = running sum); otherwise acc[j] /= sum[j]. */
static inline __attribute__((always_inline)) void
kv_walk_finish(const int NL, const int D, const float *m, const float *l, float *acc, float *ml) {
    if (ml) {
        for (int j = 0; j < NL; j++) { ml[j] = m[j]; ml[4 + j] = l[j]; }
        return;
    }
    for (int j = 0; j < NL; j++) {
        const float inv = l[j] > 0.0f ? 1.0f / l[j] : 0.0f;
        float *aj = acc + (size_t)j * D;
        for (int d = 0; d < D; d++) aj[d] *= inv;
    }
}

#endif
