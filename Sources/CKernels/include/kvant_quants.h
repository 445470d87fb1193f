#ifndef KVANT_QUANTS_H
#define KVANT_QUANTS_H
/* Kernels for GGUF weight blocks, used by the Swift `Kernels` target.
 *
 * Weight types are ggml's `ggml_type` ids (GGMLType raw values): F32 0, F16 1, Q4_0 2, Q4_1 3, Q5_0 6,
 * Q5_1 7, Q8_0 8, Q4_K 12, Q5_K 13, Q6_K 14, BF16 30. Block layouts follow ggml-common.h.
 *
 * Activations for the fast path are quantized once per row to `kvant_block_q8a` (32 int8 values with an
 * fp32 scale `d` and `s = d * sum(q)`), the same idea as llama.cpp's Q8_0/Q8_K activation blocks, and the
 * weight blocks are dotted against them with AVX2 int8 multiply-adds, dequantizing in registers. */
#include <stddef.h>
#include <stdint.h>

typedef struct {
    float d;        /* scale: x ≈ q * d */
    float s;        /* d * sum(q[0..31]) (for weight types with an offset/min) */
    int8_t q[32];
} kvant_block_q8a;

/* 1 when `type` is one of the weight types above. */
int kvant_weight_type_supported(int type);

/* Reference dequantization of `n` elements (a whole number of blocks) starting at `src`. Returns 0, or -1 for an
 * unsupported type or a bad `n`. */
int kvant_dequantize_row(int type, const void *src, float *dst, int64_t n);

/* Quantizes `n` floats (n % 32 == 0) to n/32 activation blocks: d = amax/127, q = round(x/d). */
void kvant_quantize_row_q8a(const float *x, kvant_block_q8a *y, int64_t n);

/* Activation formats of the int8 path, chosen per weight type as llama.cpp's `vec_dot_type` does, so that the
 * products round like llama.cpp's:
 *   KVANT_ACT_Q8A  (none by default): kvant_quantize_row_q8a above (fp32 d per 32, s = d·Σq);
 *   KVANT_ACT_Q8_1 (Q4_1, Q5_1): ggml `quantize_row_q8_1`: d and q as KVANT_ACT_Q8_0, s = fp16(amax/127·Σq) (fp16 of
 *                  the unrounded d times Σq, kept as its fp32 value), as ggml_vec_dot_q4_1_q8_1 reads it;
 *   KVANT_ACT_Q8_0 (Q4_0, Q5_0, Q8_0): ggml `quantize_row_q8_0`: d = fp16(amax/127) (kept as its fp32 value),
 *                  q = round-half-even(x·127/amax), s = d·Σq;
 *   KVANT_ACT_Q8_K (Q4_K, Q5_K, Q6_K): ggml `quantize_row_q8_K`: one fp32 d per 256 values (iscale = -127/max with
 *                  the signed value of largest magnitude, d = 1/iscale), stored as 8 consecutive blocks of 32 that
 *                  share d; the 4 bytes of `s` hold two int16: Σq of the block's first and second 16 values
 *                  (ggml's bsums). */
enum { KVANT_ACT_Q8A = 0, KVANT_ACT_Q8_0 = 1, KVANT_ACT_Q8_K = 2, KVANT_ACT_Q8_1 = 3 };
int kvant_act_format(int type);
/* Quantizes `n` floats to n/32 blocks in `format`. Returns 0, or -1 for a bad format or an `n` that is not a multiple
 * of 32 (256 for KVANT_ACT_Q8_K). */
int kvant_quantize_row_act(int format, const float *x, kvant_block_q8a *y, int64_t n);

/* Fast int8 path (block types Q4_0…Q6_K and Q8_0): for weight rows r in [row0, row1) of a row-major weight matrix
 * (`row_bytes` bytes per row, `n` elements per row) and activation rows i in [0, na) (each n/32 blocks,
 * consecutive, quantized with kvant_quantize_row_act(kvant_act_format(type), ...)),
 * out[i * out_stride + r] = dot(W[r], A[i]). Products are exact int32 sums rounded as llama.cpp 0.3.36's CPU kernels
 * round them: Q4_0/Q5_0/Q8_0: fp32 FMA of int32 lanes by d_w·d_a per block of 32 (ggml_vec_dot_q*_0_q8_0, tinyBLAS);
 * Q4_K: one FMA per super-block (ggml's gemv), Q6_K: ggml_vec_dot_q6_K_q8_K's int32 lanes, for every row (see
 * kvant_matmul_q8a_rounding for llama.cpp's batch-dependent variants). Returns 0, or -1 for an unsupported type. */
int kvant_matmul_q8a(int type, const void *w, size_t row_bytes, int64_t n, int64_t row0, int64_t row1,
                     const kvant_block_q8a *a, int64_t na, float *out, int64_t out_stride);
/* kvant_matmul_q8a with a choice of rounding for Q4_K and Q6_K: batch_rounding 0 (what kvant_matmul_q8a does) rounds
 * every activation row as ggml's single-row kernels (gemv) do, whatever `na`: batch-invariant, so a sequence decodes
 * the same tokens alone or batched with others. 1 rounds as llama.cpp's batched kernels (Q4_K rows in whole groups of
 * 4 per 64 values, Q6_K per super-block for na >= 8): bit-identical to llama.cpp's prefill, for the .llamaCpp
 * numerics mode. Q4_0/Q5_0/Q8_0 are exact int32 sums either way. */
int kvant_matmul_q8a_rounding(int type, const void *w, size_t row_bytes, int64_t n, int64_t row0, int64_t row1,
                              const kvant_block_q8a *a, int64_t na, float *out, int64_t out_stride, int batch_rounding);

/* fp32-activation path for every supported type (the reference path for block types, the fast path for
 * F32/F16/BF16): same contract as kvant_matmul_q8a with activation rows of n floats. `scratch` must hold n floats
 * (used to dequantize block rows). */
int kvant_matmul_f32(int type, const void *w, size_t row_bytes, int64_t n, int64_t row0, int64_t row1,
                     const float *a, int64_t na, float *out, int64_t out_stride, float *scratch);

/* The int8 kernels chosen at run time via CPUID: 2 = AVX-512 (F/BW/VL/VNNI, e.g. AMD Zen 4, which has no AVX-VNNI)
 * for Q4_0/Q5_0/Q8_0: tiles of 2 weight rows × 8 activation rows for prefill (na ≥ 2) and a 4-row gemv with EVEX
 * vpdpbusd for decode (na = 1), the other types through AVX-VNNI when present, else AVX2 (KVANT_NO_AVX512=1 disables
 * it); 1 = AVX-VNNI (vpdpbusd; KVANT_NO_VNNI=1 forces AVX2), 0 = AVX2. Every variant gives bit-identical results. */
int kvant_int8_kernel_variant(void);
/* Tests: force 0 (AVX2), 1 (AVX-VNNI) or 2 (AVX-512 tiles + AVX-VNNI); returns -1 when the CPU lacks it; -1 re-detects.
 * Not thread-safe. */
int kvant_force_int8_kernel_variant(int variant);
/* Tests: 0 makes the Q4_K/Q5_K/Q6_K kernels use their scalar min term and per-row gather instead of the per-call
 * activation tables (kq_tables / q6_tables in quants.c: bit-identical, faster); 1 (the default) restores them.
 * Not thread-safe. */
void kvant_set_kquant_tables(int on);

/* True when the int8 path exists for `type`. */
int kvant_type_has_q8a_path(int type);

/* GeGLU in place: gate[i] = gelu_tanh(gate[i]) * up[i] (GELU tanh approximation, AVX2 with an exp polynomial,
 * relative error ~1e-6). */
void kvant_geglu(float *gate, const float *up, int64_t n);
/* SwiGLU in place: gate[i] = gate[i] / (1 + exp(-gate[i])) * up[i]. */
void kvant_swiglu(float *gate, const float *up, int64_t n);

/* GeGLU as ggml computes it with GGML_GELU_FP16 (ggml_vec_geglu_f32): gate[i] = fp16(gelu_tanh(fp16(x))) · up[i] for
 * -10 < x < 10 (a 65 536-entry fp16 table built once), x · up[i] for x ≥ 10, 0 for x ≤ -10. */
void kvant_geglu_f16_table(float *gate, const float *up, int64_t n);
/* x[i] = fp16(x[i]) (round to nearest even), n elements. */
void kvant_round_f16(float *x, int64_t n);

/* Q8_0 and Q5_0 repacked 16 rows at a time for AVX-512 VNNI ("x16"; q0x16.c says why and gives the layouts; a matrix
 * keeps its size: 16 rows × row_bytes = n/32 group blocks of 16 blocks' bytes). `type`: 8 (Q8_0) or 6 (Q5_0). */
/* 1 when the CPU runs the repacked kernels (AVX-512 F/BW/VL/VNNI); without it a repacked matrix still works (a scalar
 * path) but slowly, so callers repack only when this says 1. */
int kvant_q0x16_available(void);
/* Repacks `rows` rows of `n` values (row_bytes = n/32 × 34 or 22) from `src` into `dst` (the same size; dst may equal
 * src: each group of 16 rows occupies the same bytes before and after and is repacked through a copy). Returns 0, or -1
 * for another type, rows % 16 != 0, n % 32 != 0, a row_bytes that is not the type's, or no memory for the copy. */
int kvant_repack_q0x16(int type, const void *src, size_t row_bytes, int64_t rows, int64_t n, void *dst);
/* Row r of a repacked matrix of n columns as floats (exactly ggml's dequantize_row_q8_0 / _q5_0 of the original row). */
int kvant_dequantize_row_q0x16(int type, const void *w, int64_t n, int64_t r, float *y);
/* out[i·out_stride + r] = dot(W[r], A[i]) for rows r in [row0, row1) (multiples of 16) and activation rows i < na
 * (KVANT_ACT_Q8_0 blocks, n/32 per row). lanes 0: per block one exact int32 sum of the 32 products, one fp32 FMA by
 * d_w·d_a per block in block order (batch-invariant; rounds once per block where ggml rounds 8 lanes). lanes 1: ggml's
 * 8 int32 lanes per block and their FMA and horizontal-sum order: bit-identical to kvant_matmul_q8a on the unpacked
 * rows (the .llamaCpp numerics; needs the AVX-512 path). Returns 0, or -1 for bad arguments. */
int kvant_matmul_q0x16(int type, const void *w, int64_t n, int64_t row0, int64_t row1, const kvant_block_q8a *a,
                       int64_t na, float *out, int64_t out_stride, int lanes);

#endif
