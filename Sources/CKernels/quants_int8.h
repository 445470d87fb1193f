/* The int8 block kernels, included twice by quants.c: once for AVX2 (maddubs + madd) and once for AVX-VNNI
 * (vpdpbusd). KV_SFX names the variant; KV_DOT_U8S8 / KV_DOT_S8S8 are its 32-byte dot products (8 int32 sums). */

/* One weight row against `na` (1..NA_MAX) activation rows. `astride` = blocks between activation rows.
 * Q4_K/Q5_K take `bsT` and `daT` (kq_tables: the activation rows' block sums and super-block d, activation row
 * innermost) and compute the min term and the final FMAs for all na rows in vector lanes, with the same integer sums
 * and the same float operations per row as the scalar code; Q6_K takes `bsT` (q6_tables: the bsums). NULL: the scalar
 * code (and Q6_K's gather). */
static inline __attribute__((always_inline))
void KV_SFX(dot_row_q)(const int type, const uint8_t *w, int64_t n, const kvant_block_q8a *a, int64_t astride, const int na,
               float *res, const int32_t *bsT, const float *daT) {
    __m256 acc[NA_MAX];
    float macc[NA_MAX];
    for (int i = 0; i < NA_MAX; i++) { acc[i] = _mm256_setzero_ps(); macc[i] = 0.0f; }
    const __m256i ones16 = _mm256_set1_epi16(1);

    switch (type) {
    case T_Q8_0:
        for (int64_t b = 0; b < n / 32; b++, w += 34) {
            const float d = fp16_to_f32(rd16(w));
            const __m256i q = _mm256_loadu_si256((const __m256i *)(w + 2));
            for (int i = 0; i < na; i++) {
                const kvant_block_q8a *ab = a + i * astride + b;
                __m256i av = _mm256_loadu_si256((const __m256i *)ab->q);
                __m256 p = _mm256_cvtepi32_ps(KV_DOT_S8S8(q, av));
                acc[i] = _mm256_fmadd_ps(p, _mm256_mul_ps(_mm256_set1_ps(d), _mm256_broadcast_ss(&ab->d)), acc[i]);
            }
        }
        break;
    case T_Q4_0:
    case T_Q4_1:
    case T_Q5_0:
    case T_Q5_1: {
        const int has_m = type == T_Q4_1 || type == T_Q5_1;
        const int five = type == T_Q5_0 || type == T_Q5_1;
        const int bs = type == T_Q4_0 ? 18 : type == T_Q4_1 ? 20 : type == T_Q5_0 ? 22 : 24;
        for (int64_t b = 0; b < n / 32; b++, w += bs) {
            const float d = fp16_to_f32(rd16(w));
            float m;
            __m256i u;
            if (five) {
                uint32_t qh; memcpy(&qh, w + (has_m ? 4 : 2), 4);
                u = _mm256_or_si256(nibbles32(w + (has_m ? 8 : 6)), bits32_to_0x10(qh));
                m = has_m ? fp16_to_f32(rd16(w + 2)) : -16.0f * d;
            } else {
                u = nibbles32(w + (has_m ? 4 : 2));
                m = has_m ? fp16_to_f32(rd16(w + 2)) : -8.0f * d;
            }
            if (!has_m) {
                /* Signed weights (u - 8 / u - 16) against the activations: exact int32 lanes as ggml_vec_dot_q5_0_q8_0. */
                const __m256i ws = _mm256_sub_epi8(u, _mm256_set1_epi8(five ? 16 : 8));
                for (int i = 0; i < na; i++) {
                    const kvant_block_q8a *ab = a + i * astride + b;
                    __m256i av = _mm256_loadu_si256((const __m256i *)ab->q);
                    __m256 p = _mm256_cvtepi32_ps(KV_DOT_S8S8(ws, av));
                    acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(d), _mm256_broadcast_ss(&ab->d)), p, acc[i]);
                }
                continue;
            }
            for (int i = 0; i < na; i++) {
                const kvant_block_q8a *ab = a + i * astride + b;
                __m256i av = _mm256_loadu_si256((const __m256i *)ab->q);
                __m256 p = _mm256_cvtepi32_ps(KV_DOT_U8S8(u, av));
                acc[i] = _mm256_fmadd_ps(p, _mm256_mul_ps(_mm256_set1_ps(d), _mm256_broadcast_ss(&ab->d)), acc[i]);
                macc[i] += m * ab->s;
            }
        }
        break;
    }
    case T_Q4_K_SB64:
    case T_Q4_K:
    case T_Q5_K: {
        /* Q8_K activations: per super-block one int32 Σ_j scale_j·Σ u·q and one Σ_j min_j·Σq, each scaled once
         * (ggml_gemm_q4_K_8x8_q8_K: acc += isum·(d·d_a), accm += imin·(dmin·d_a), result acc - accm). */
        const int five = type == T_Q5_K;
        const int bs = five ? 176 : 144;
        const __m256i lo4 = _mm256_set1_epi8(0x0F), one8 = _mm256_set1_epi8(1);
        float sacc[NA_MAX], macc2[NA_MAX];
        for (int i = 0; i < NA_MAX; i++) { sacc[i] = 0.0f; macc2[i] = 0.0f; }
        const int vec = bsT != NULL && type != T_Q4_K_SB64;
        __m256 saccv = _mm256_setzero_ps(), maccv = _mm256_setzero_ps();
        for (int64_t b = 0; b < n / 256; b++, w += bs) {
            const float d = fp16_to_f32(rd16(w)), dmin = fp16_to_f32(rd16(w + 2));
            const uint8_t *sc = w + 4;
            const uint8_t *qs = five ? w + 48 : w + 16;
            __m256i qhv = five ? _mm256_loadu_si256((const __m256i *)(w + 16)) : _mm256_setzero_si256();
            __m256i isum[NA_MAX];
            int imin[NA_MAX];
            for (int i = 0; i < NA_MAX; i++) { isum[i] = _mm256_setzero_si256(); imin[i] = 0; }
            __m256i iminv = _mm256_setzero_si256();
            for (int j2 = 0; j2 < 4; j2++) {
                const __m256i raw = _mm256_loadu_si256((const __m256i *)(qs + 32 * j2));
                for (int half = 0; half < 2; half++) {
                    const int j = 2 * j2 + half;
                    uint8_t s, mm;
                    scale_min_k4(j, sc, &s, &mm);
                    const __m256i s16 = _mm256_set1_epi16((short)s);
                    __m256i u = half ? _mm256_and_si256(_mm256_srli_epi16(raw, 4), lo4) : _mm256_and_si256(raw, lo4);
                    if (five) {
                        __m256i hb = _mm256_and_si256(_mm256_srli_epi16(qhv, j), one8);
                        u = _mm256_or_si256(u, _mm256_slli_epi16(hb, 4));
                    }
                    for (int i = 0; i < na; i++) {
                        const kvant_block_q8a *ab = a + i * astride + 8 * b + j;
                        __m256i av = _mm256_loadu_si256((const __m256i *)ab->q);
                        isum[i] = KV_DPWSSD(isum[i], _mm256_maddubs_epi16(u, av), s16);
                        if (!vec) {
                            int16_t bs2[2];
                            memcpy(bs2, &ab->s, 4);
                            imin[i] += (int)mm * ((int)bs2[0] + (int)bs2[1]);
                        }
                    }
                    if (vec)   /* lane i: imin[i] += mm · (block sum of activation row i) */
                        iminv = _mm256_add_epi32(iminv, _mm256_mullo_epi32(_mm256_set1_epi32(mm),
                                                  _mm256_loadu_si256((const __m256i *)(bsT + (8 * b + j) * 8))));
                }
                if (type == T_Q4_K_SB64) {
                    /* ggml's AVX-512 q4_K_8x8 gemm (4+ activation rows): one FMA per 64 values */
                    for (int i = 0; i < na; i++) {
                        const float da = a[i * astride + 8 * b].d;
                        sacc[i] = fmaf((float)hsum_epi32(isum[i]), d * da, sacc[i]);
                        macc2[i] = fmaf((float)imin[i], dmin * da, macc2[i]);
                        isum[i] = _mm256_setzero_si256();
                        imin[i] = 0;
                    }
                }
            }
            if (vec) {
                /* lane i: sacc[i] = fmaf((float)Σisum[i], d·da_i, sacc[i]); macc2[i] = fmaf((float)imin[i], dmin·da_i, macc2[i]) */
                _Alignas(32) int32_t hs[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                for (int i = 0; i < na; i++) hs[i] = hsum_epi32(isum[i]);
                const __m256 dav = _mm256_loadu_ps(daT + 8 * b);
                saccv = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_load_si256((const __m256i *)hs)),
                                        _mm256_mul_ps(_mm256_set1_ps(d), dav), saccv);
                maccv = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iminv), _mm256_mul_ps(_mm256_set1_ps(dmin), dav), maccv);
                continue;
            }
            for (int i = 0; i < na && type != T_Q4_K_SB64; i++) {
                const float da = a[i * astride + 8 * b].d;
                sacc[i] = fmaf((float)hsum_epi32(isum[i]), d * da, sacc[i]);
                macc2[i] = fmaf((float)imin[i], dmin * da, macc2[i]);
            }
        }
        if (vec) {
            _mm256_storeu_ps(sacc, saccv);
            _mm256_storeu_ps(macc2, maccv);
        }
        for (int i = 0; i < na; i++) macc[i] = sacc[i] - macc2[i];
        break;
    }
    case T_Q6_K_TILED:
    case T_Q6_K: {
        /* Q8_K activations: int32 lanes summed over the super-block, one FMA by d_w·d_a per super-block
         * (ggml_vec_dot_q6_K_q8_K). */
        const __m256i lo4 = _mm256_set1_epi8(0x0F), three = _mm256_set1_epi8(3);
        for (int64_t b = 0; b < n / 256; b++, w += 210) {
            const uint8_t *ql = w, *qh = w + 128;
            const int8_t *sc = (const int8_t *)(w + 192);
            const float d = fp16_to_f32(rd16(w + 208));
            __m256i isum[NA_MAX];
            for (int i = 0; i < NA_MAX; i++) isum[i] = _mm256_setzero_si256();
            for (int h = 0; h < 2; h++) {
                const __m256i qhv = _mm256_loadu_si256((const __m256i *)(qh + 32 * h));
                const __m256i qlA = _mm256_loadu_si256((const __m256i *)(ql + 64 * h));
                const __m256i qlB = _mm256_loadu_si256((const __m256i *)(ql + 64 * h + 32));
                for (int k = 0; k < 4; k++) {
                    const __m256i src = (k & 1) ? qlB : qlA;
                    __m256i lo = (k >= 2) ? _mm256_and_si256(_mm256_srli_epi16(src, 4), lo4) : _mm256_and_si256(src, lo4);
                    __m256i hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qhv, 2 * k), three), 4);
                    const __m256i q = _mm256_or_si256(lo, hi);   /* 0..63; the -32 is subtracted via the bsums */
                    const __m256i s16 = _mm256_set_m128i(_mm_set1_epi16(sc[8 * h + 2 * k + 1]),
                                                         _mm_set1_epi16(sc[8 * h + 2 * k]));
                    const int j = 4 * h + k;
                    for (int i = 0; i < na; i++) {
                        const kvant_block_q8a *ab = a + i * astride + 8 * b + j;
                        __m256i av = _mm256_loadu_si256((const __m256i *)ab->q);
                        isum[i] = KV_DPWSSD(isum[i], _mm256_maddubs_epi16(q, av), s16);
                    }
                }
            }
            /* lane k -= 32·(bsum[2k]·sc[2k] + bsum[2k+1]·sc[2k+1]) (ggml's q8sclsub) */
            const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc));
            const __m256i bidx = _mm256_setr_epi32(0, 10, 20, 30, 40, 50, 60, 70);   /* s of blocks 0..7, 40 bytes apart */
            for (int i = 0; i < na; i++) {
                /* bsT (q6_tables): the same 8 words, tabled once per call instead of gathered once per weight row */
                const __m256i bs = bsT ? _mm256_loadu_si256((const __m256i *)(bsT + i * (n / 32) + 8 * b))
                                       : _mm256_i32gather_epi32((const int *)&a[i * astride + 8 * b].s, bidx, 4);
                isum[i] = _mm256_sub_epi32(isum[i], _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), 5));
            }
            if (type == T_Q6_K_TILED) {
                /* ggml's tiled K-quant matmul (8+ activation rows): one int32 per super-block,
                 * buf += (isum·d_w)·d_a (GCC contracts the add and the second multiply to one FMA) */
                for (int i = 0; i < na; i++) {
                    const float da = a[i * astride + 8 * b].d;
                    macc[i] = fmaf((float)hsum_epi32(isum[i]) * d, da, macc[i]);
                }
                continue;
            }
            for (int i = 0; i < na; i++) {
                const float dd = a[i * astride + 8 * b].d * d;
                acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(isum[i]), acc[i]);
            }
        }
        break;
    }
    }
    for (int i = 0; i < na; i++) res[i] = hsum256(acc[i]) + macc[i];
}

/* Row loop for one (type, activation-group size) pair: both are compile-time constants after inlining, so the
 * accumulators stay in registers. */
static inline __attribute__((always_inline))
void KV_SFX(matmul_rows)(const int type, const int cnt, const uint8_t *wb, size_t row_bytes, int64_t n, int64_t r0, int64_t r1,
                 const kvant_block_q8a *a, int64_t astride, float *out, int64_t out_stride, const int32_t *bsT, const float *daT) {
    float res[NA_MAX];
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = wb + (size_t)r * row_bytes;
        _mm_prefetch((const char *)(row + row_bytes), _MM_HINT_T0);
        KV_SFX(dot_row_q)(type, row, n, a, astride, cnt, res, bsT, daT);
        for (int i = 0; i < cnt; i++) out[i * out_stride + r] = res[i];
    }
}

#undef KV_DEFINE_ROWS
#define KV_DEFINE_ROWS(NAME, TYPE) \
    static void KV_SFX(NAME)(int cnt, const uint8_t *wb, size_t rb, int64_t n, int64_t r0, int64_t r1, const int32_t *bsT, const float *daT, \
                     const kvant_block_q8a *a, int64_t as, float *out, int64_t os) { \
        switch (cnt) { \
        case 1: KV_SFX(matmul_rows)(TYPE, 1, wb, rb, n, r0, r1, a, as, out, os, bsT, daT); break; \
        case 2: KV_SFX(matmul_rows)(TYPE, 2, wb, rb, n, r0, r1, a, as, out, os, bsT, daT); break; \
        case 3: KV_SFX(matmul_rows)(TYPE, 3, wb, rb, n, r0, r1, a, as, out, os, bsT, daT); break; \
        case 4: KV_SFX(matmul_rows)(TYPE, 4, wb, rb, n, r0, r1, a, as, out, os, bsT, daT); break; \
        case 5: KV_SFX(matmul_rows)(TYPE, 5, wb, rb, n, r0, r1, a, as, out, os, bsT, daT); break; \
        case 6: KV_SFX(matmul_rows)(TYPE, 6, wb, rb, n, r0, r1, a, as, out, os, bsT, daT); break; \
        case 7: KV_SFX(matmul_rows)(TYPE, 7, wb, rb, n, r0, r1, a, as, out, os, bsT, daT); break; \
        default: KV_SFX(matmul_rows)(TYPE, 8, wb, rb, n, r0, r1, a, as, out, os, bsT, daT); break; \
        } \
    }
KV_DEFINE_ROWS(rows_q8_0, T_Q8_0)
KV_DEFINE_ROWS(rows_q4_0, T_Q4_0)
KV_DEFINE_ROWS(rows_q4_1, T_Q4_1)
KV_DEFINE_ROWS(rows_q5_0, T_Q5_0)
KV_DEFINE_ROWS(rows_q5_1, T_Q5_1)
KV_DEFINE_ROWS(rows_q4_k, T_Q4_K)
KV_DEFINE_ROWS(rows_q4_k_sb64, T_Q4_K_SB64)
KV_DEFINE_ROWS(rows_q5_k, T_Q5_K)
KV_DEFINE_ROWS(rows_q6_k, T_Q6_K)
KV_DEFINE_ROWS(rows_q6_k_tiled, T_Q6_K_TILED)

/* batch_rounding: 1 = round Q4_K/Q6_K sums as llama.cpp's batched kernels do (depends on na), 0 = one rounding
 * for every row whatever the batch (batch-invariant: a row's result never depends on its neighbours). */
static int KV_SFX(matmul_q8a)(int type, const void *w, size_t row_bytes, int64_t n, int64_t row0, int64_t row1,
                     const kvant_block_q8a *a, int64_t na, float *out, int64_t out_stride, int batch_rounding) {
    const int base = type == T_Q4_K_SB64 ? T_Q4_K : type == T_Q6_K_TILED ? T_Q6_K : type;
    if (!kvant_type_has_q8a_path(base) || n % block_elems(base) != 0 || n % 32 != 0) return -1;
    typedef void (*rows_fn)(int, const uint8_t *, size_t, int64_t, int64_t, int64_t, const int32_t *, const float *,
                            const kvant_block_q8a *, int64_t, float *, int64_t);
    if (batch_rounding && type == T_Q6_K && na >= 8) type = T_Q6_K_TILED;   /* as ggml: its tiled kernel takes batches of 8+ rows */
    rows_fn fn = type == T_Q6_K_TILED ? KV_SFX(rows_q6_k_tiled) : type == T_Q4_K_SB64 ? KV_SFX(rows_q4_k_sb64) : type == T_Q8_0 ? KV_SFX(rows_q8_0) : type == T_Q4_0 ? KV_SFX(rows_q4_0) : type == T_Q4_1 ? KV_SFX(rows_q4_1)
               : type == T_Q5_0 ? KV_SFX(rows_q5_0) : type == T_Q5_1 ? KV_SFX(rows_q5_1) : type == T_Q4_K ? KV_SFX(rows_q4_k)
               : type == T_Q5_K ? KV_SFX(rows_q5_k) : KV_SFX(rows_q6_k);
    const uint8_t *wb = (const uint8_t *)w;
    const int64_t astride = n / 32;
    if (batch_rounding && type == T_Q4_K && na >= 4) {
        /* As ggml's repacked Q4_K: activation rows in whole groups of 4 go through its gemm (one FMA per 64
         * values), the rest through its gemv (one FMA per super-block). */
        const int64_t g4 = na - na % 4;
        KV_SFX(matmul_q8a)(T_Q4_K_SB64, w, row_bytes, n, row0, row1, a, g4, out, out_stride, 1);
        if (na > g4) KV_SFX(matmul_q8a)(T_Q4_K, w, row_bytes, n, row0, row1, a + g4 * astride, na - g4, out + g4 * out_stride, out_stride, 1);
        return 0;
    }
    /* Q4_K/Q5_K: the activation rows' block sums and super-block d, laid out for the vector min term; Q6_K: the bsums. */
    int32_t *bsT = NULL;
    float *daT = NULL;
    if ((type == T_Q4_K || type == T_Q5_K) && kquant_tables_on) kq_tables(a, na, n, &bsT, &daT);
    const int q6 = (type == T_Q6_K || type == T_Q6_K_TILED) && kquant_tables_on;
    if (q6) bsT = q6_tables(a, na, n);
    /* Tile: a few weight rows stay in L1 while every group of up to 8 activation rows passes over them. */
    const int64_t RT = na > NA_MAX ? 8 : (row1 - row0);
    for (int64_t r0 = row0; r0 < row1; r0 += RT) {
        const int64_t r1 = r0 + RT < row1 ? r0 + RT : row1;
        for (int64_t i0 = 0, g = 0; i0 < na; i0 += NA_MAX, g++) {
            const int cnt = (int)(na - i0 < NA_MAX ? na - i0 : NA_MAX);
            fn(cnt, wb, row_bytes, n, r0, r1, bsT ? bsT + g * (n / 32) * NA_MAX : NULL, daT ? daT + g * (n / 256) * NA_MAX : NULL,
               a + i0 * astride, astride, out + i0 * out_stride, out_stride);
        }
    }
    free(bsT);
    free(daT);
    return 0;
}

