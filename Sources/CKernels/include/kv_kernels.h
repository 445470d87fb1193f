#ifndef KVANT_KV_KERNELS_H
#define KVANT_KV_KERNELS_H
/* KV-cache kernels: storing one token row into a block in the cache dtype, reading it back,
 * and causal attention of one query position over a block table (paged attention, vLLM style)
 * with int8 scales folded into the dot products. Implemented in kv_*.c with AVX2/FMA/F16C. */
#include <stddef.h>
#include <stdint.h>

/* Storage dtypes of one cache element. */
enum {
    KV_DT_F32 = 0,        /* float */
    KV_DT_F16 = 1,        /* IEEE binary16 */
    KV_DT_BF16 = 2,       /* bfloat16, round-to-nearest-even on store */
    KV_DT_I8_STATIC = 3,  /* int8, one scale per (block, KV head) from static_scales */
    KV_DT_I8_TOKEN = 4,   /* int8, one fp32 scale per (token, KV head) stored in the block */
    KV_DT_Q4 = 5          /* int4 (int4_pertoken): K rows kv_q4k, V rows kv_q4v (below); head_dim % 64 == 0 */
};

/* One layer of the paged cache as the attention kernel sees it.
 * Block `b` of this layer starts at base + b * block_stride; inside it:
 *   K values [num_kv_heads, block_size, head_dim] at offset 0,
 *   V values [num_kv_heads, block_size, head_dim] at v_offset,
 *   (KV_DT_I8_TOKEN) K scales [num_kv_heads, block_size] fp32 at ks_offset, V scales at vs_offset.
 * KV_DT_Q4: K rows of kv_q4k_row_bytes(head_dim) bytes, V rows (from v_offset) of kv_q4v_row_bytes(head_dim)
 * bytes, their group scales inside the rows.
 * static_scales / static_v_scales (KV_DT_I8_STATIC): [num_blocks, num_kv_heads] fp32, the K / V scale each
 * block was written with (equal unless the scale file gives K and V separate scales). */
typedef struct {
    const uint8_t *base;
    size_t block_stride;
    size_t v_offset;
    size_t ks_offset;
    size_t vs_offset;
    const float *static_scales;
    const float *static_v_scales;
    const int32_t *block_ids;   /* the sequence's block table: logical block i -> block id */
    int32_t dtype;
    int32_t num_kv_heads;
    int32_t head_dim;
    int32_t block_size;
    int32_t use_avx512;         /* nonzero: use the AVX-512 kernel when head_dim % 16 == 0 and the CPU has it */
    int32_t numerics;           /* KV_NUMERICS_*: how kv_attend rounds (kv_attend_partial always uses the default) */
} kv_layer_view;

/* KV_NUMERICS_DEFAULT: online softmax in fp32 (below). KV_NUMERICS_LLAMACPP: for KV_DT_F16 with head_dim % 16 == 0
 * on CPUs with AVX-512, llama.cpp's CPU attention with flash attention off, operation for operation (f16 P,
 * ggml_v_expf, its summation orders; the caller passes the query already scaled and rounded to f16, scale 1), so
 * that logits can be compared with llama.cpp bit for bit; otherwise the default. */
enum { KV_NUMERICS_DEFAULT = 0, KV_NUMERICS_LLAMACPP = 1 };
/* 1 when KV_NUMERICS_LLAMACPP is honoured on this CPU (AVX-512F/BW/DQ/VL). */
int32_t kv_llamacpp_numerics_available(void);

/* 1 when the CPU and OS support AVX-512F/BW/DQ/VL (checked once), else 0. */
int32_t kv_cpu_has_avx512(void);

/* Attention of one query position over key positions first...last (inclusive) of the view's
 * sequence. query/output: [num_heads, head_dim]; query head h uses KV head h / (num_heads / num_kv_heads).
 * Softmax in fp32 with max subtraction (online, per chunk). head_dim <= 4096. */
void kv_attend(const kv_layer_view *view, int32_t first, int32_t last,
               const float *query, int32_t num_heads, float scale, float *output);

/* Split-K ("flash-decoding") halves of kv_attend: the same attention over keys first...last, left
 * unnormalized: acc [num_heads, head_dim] = sum exp(s - m) v, m/l [num_heads] = running max and sum.
 * kv_attend_merge combines `parts` (<= 64) such partials (acc [parts, num_heads, head_dim],
 * m/l [parts, num_heads]) into output [num_heads, head_dim]. */
void kv_attend_partial(const kv_layer_view *view, int32_t first, int32_t last, const float *query,
                       int32_t num_heads, float scale, float *acc, float *m, float *l);
/* One KV head's attention for nl <= 4 query heads (the unit kv_attend runs): q[4] their rows (head_dim), acc
 * [4, head_dim] the output (normalized), or with ml != NULL unnormalized with ml[0..3] the running maxima and
 * ml[4..7] the sums (kv_attend_partial). KV_DT_Q4 only. `_reference` is the AVX-512 kernel before the current one
 * (kv_attention_q4_ref.c), for the bit-identity tests; it does nothing without AVX-512. */
void kv_attend_group_q4(const kv_layer_view *vw, int g, int nl, int first, int last, const float *const *q,
                        float scale, float *acc, float *ml);
void kv_attend_group_q4_reference(const kv_layer_view *vw, int32_t g, int32_t nl, int32_t first, int32_t last,
                                  const float *const *q, float scale, float *acc, float *ml);
void kv_attend_merge(int32_t parts, int32_t num_heads, int32_t head_dim, const float *acc,
                     const float *m, const float *l, float *output);

/* Stores n values of src into dst in dtype. For int8 dtypes q = clamp(round(x / s), -127, 127)
 * (round half to even); s == 0 stores zeros. Returns the number of values clipped at +-127. */
int32_t kv_store_row(int32_t dtype, const float *src, void *dst, int32_t n, float s);

/* Reads n values of dtype back as fp32 (int8: q * s). */
void kv_load_row(int32_t dtype, const void *src, float *dst, int32_t n, float s);

/* int4 KV row formats (kv_q4.c; docs/kv-cache.md "4-bit KV: measurements"): K asymmetric in groups of 32
 * (fp16 d, fp16 min, 16 bytes of nibbles), V symmetric q4_0 rule in groups of 64 (fp16 d, 32 bytes). n must be
 * a multiple of the group. The attention kernels read them directly (KV_DT_Q4, kv_attention_q4.c). */
#define KV_Q4K_GROUP 32
#define KV_Q4K_GROUP_BYTES 20
#define KV_Q4V_GROUP 64
#define KV_Q4V_GROUP_BYTES 34
int32_t kv_q4k_row_bytes(int32_t n);
int32_t kv_q4v_row_bytes(int32_t n);
void kv_store_row_q4k(const float *src, void *dst, int32_t n);
void kv_load_row_q4k(const void *src, float *dst, int32_t n);
void kv_store_row_q4v(const float *src, void *dst, int32_t n);
void kv_load_row_q4v(const void *src, float *dst, int32_t n);

/* Largest power of two dividing head_dim (256 for 256, 16 for 80): the group size of kv_hadamard. */
int32_t kv_hadamard_group(int32_t head_dim);

/* In place, x <- (H_g / sqrt(g)) x on each group of g consecutive values (g a power of two dividing n;
 * H_g the Sylvester Hadamard matrix, fast Walsh-Hadamard transform, g log2 g additions per group). The
 * normalized transform is symmetric and orthogonal, so applying it twice restores x (up to fp32 rounding)
 * and dot products are preserved: (Hq)·(Hk) = q·k. int8_pertoken rotates K and V with it before
 * quantizing, spreading outlier channels over the head (QuaRot, Ashkboos et al. 2024). g <= 1: no-op. */
void kv_hadamard(float *x, int32_t n, int32_t g);

/* max |x_i| over n values (0 for n == 0; NaN values are ignored). */
float kv_amax(const float *x, int32_t n);

/* Atomically *slot = max(*slot, v) for v >= 0 (non-negative floats order like their bits). */
void kv_atomic_max_f32(float *slot, float v);

/* Atomically *slot += v. */
void kv_atomic_add_i64(int64_t *slot, int64_t v);

#endif
