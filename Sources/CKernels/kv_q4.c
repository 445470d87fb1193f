/* The int4 KV row formats chosen in docs/kv-cache.md "4-bit KV: measurements" (issue 16), stored by
 * KVCachePool for `int4_pertoken` and read directly by the attention kernels (kv_attention_q4.c).
 *
 * K row (kv_q4k): groups of 32 values, asymmetric (llama.cpp q4_1 layout): per group fp16 d, fp16 m, then 16
 * bytes; byte j holds q_j (low nibble) and q_{j+16} (high nibble), q in 0..15, x^ = m + q * d with
 * d = fp16((max - min) / 15), m = fp16(min), q = clamp(round_half_even((x - m) / d), 0, 15).
 * V row (kv_q4v): groups of 64 values, symmetric (llama.cpp q4_0 rule): per group fp16 d, then 32 bytes; byte j
 * holds q_j + 8 (low nibble) and q_{j+32} + 8 (high nibble), q in -8..7, x^ = q * d with d = fp16(v / -8), v the
 * group's value of largest magnitude (first one on ties), q = clamp(round_half_even(x / d), -8, 7).
 * A row of n values (n a multiple of the group) takes n/32 * 20 bytes (K) or n/64 * 34 bytes (V). A group of
 * equal values (K) or of zeros (V) stores d = 0 and reads back m (K) or 0 (V). */
#include <immintrin.h>
#include <math.h>
#include <string.h>
#include "kv_kernels.h"

static inline uint16_t f16(float x) { return _cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT); }
static inline float f32(uint16_t h) { return _cvtsh_ss(h); }

int32_t kv_q4k_row_bytes(int32_t n) { return n / KV_Q4K_GROUP * KV_Q4K_GROUP_BYTES; }
int32_t kv_q4v_row_bytes(int32_t n) { return n / KV_Q4V_GROUP * KV_Q4V_GROUP_BYTES; }

void kv_store_row_q4k(const float *src, void *dst, int32_t n) {
    uint8_t *out = (uint8_t *)dst;
    for (int32_t g = 0; g + KV_Q4K_GROUP <= n; g += KV_Q4K_GROUP, out += KV_Q4K_GROUP_BYTES) {
        const float *x = src + g;
        float lo = x[0], hi = x[0];
        for (int i = 1; i < KV_Q4K_GROUP; i++) { lo = x[i] < lo ? x[i] : lo; hi = x[i] > hi ? x[i] : hi; }
        const uint16_t dh = f16((hi - lo) / 15.0f), mh = f16(lo);
        const float d = f32(dh), m = f32(mh);
        memcpy(out, &dh, 2);
        memcpy(out + 2, &mh, 2);
        uint8_t q[KV_Q4K_GROUP];
        for (int i = 0; i < KV_Q4K_GROUP; i++) {
            float r = d > 0.0f ? nearbyintf((x[i] - m) / d) : 0.0f;
            r = r > 0.0f ? r : 0.0f;
            r = r < 15.0f ? r : 15.0f;
            q[i] = (uint8_t)r;
        }
        for (int j = 0; j < KV_Q4K_GROUP / 2; j++) out[4 + j] = (uint8_t)(q[j] | (q[j + KV_Q4K_GROUP / 2] << 4));
    }
}

void kv_load_row_q4k(const void *src, float *dst, int32_t n) {
    const uint8_t *in = (const uint8_t *)src;
    for (int32_t g = 0; g + KV_Q4K_GROUP <= n; g += KV_Q4K_GROUP, in += KV_Q4K_GROUP_BYTES) {
        uint16_t dh, mh;
        memcpy(&dh, in, 2);
        memcpy(&mh, in + 2, 2);
        const float d = f32(dh), m = f32(mh);
        for (int j = 0; j < KV_Q4K_GROUP / 2; j++) {
            dst[g + j] = m + (float)(in[4 + j] & 15) * d;
            dst[g + j + KV_Q4K_GROUP / 2] = m + (float)(in[4 + j] >> 4) * d;
        }
    }
}

void kv_store_row_q4v(const float *src, void *dst, int32_t n) {
    uint8_t *out = (uint8_t *)dst;
    for (int32_t g = 0; g + KV_Q4V_GROUP <= n; g += KV_Q4V_GROUP, out += KV_Q4V_GROUP_BYTES) {
        const float *x = src + g;
        float v = 0.0f;
        for (int i = 0; i < KV_Q4V_GROUP; i++) v = fabsf(x[i]) > fabsf(v) ? x[i] : v;
        const uint16_t dh = f16(v / -8.0f);
        const float d = f32(dh);
        memcpy(out, &dh, 2);
        uint8_t q[KV_Q4V_GROUP];
        for (int i = 0; i < KV_Q4V_GROUP; i++) {
            float r = d != 0.0f ? nearbyintf(x[i] / d) : 0.0f;
            r = r > -8.0f ? r : -8.0f;
            r = r < 7.0f ? r : 7.0f;
            q[i] = (uint8_t)((int)r + 8);
        }
        for (int j = 0; j < KV_Q4V_GROUP / 2; j++) out[2 + j] = (uint8_t)(q[j] | (q[j + KV_Q4V_GROUP / 2] << 4));
    }
}

void kv_load_row_q4v(const void *src, float *dst, int32_t n) {
    const uint8_t *in = (const uint8_t *)src;
    for (int32_t g = 0; g + KV_Q4V_GROUP <= n; g += KV_Q4V_GROUP, in += KV_Q4V_GROUP_BYTES) {
        uint16_t dh;
        memcpy(&dh, in, 2);
        const float d = f32(dh);
        for (int j = 0; j < KV_Q4V_GROUP / 2; j++) {
            dst[g + j] = (float)((int)(in[2 + j] & 15) - 8) * d;
            dst[g + j + KV_Q4V_GROUP / 2] = (float)((int)(in[2 + j] >> 4) - 8) * d;
        }
    }
}
