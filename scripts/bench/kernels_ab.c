/* Kernel A/B for the int8 matmul (scripts/bench/kernels-ab.sh builds it): the CKernels of a base git revision
 * (symbols prefixed old_) against the working tree's, on random weight blocks and activations.
 *
 *   1. bit-identity: every int8 weight type, 1..38 activation rows, both roundings: the two must agree bit for bit;
 *   2. CPU time (CLOCK_THREAD_CPUTIME_ID, one thread, best of 7 / 2000 reps) for Gemma 3 270M's layer shapes at 512
 *      activation rows (prefill) and 1 (decode; the weights then sit in L2, so this is the kernel's compute rate);
 *   3. mean CPU time at 2..16 activation rows (batched decode) with the weights cold (64 copies cycled), for the
 *      Q5_0/Q8_0 layer shapes and a 16 384-row slice of the Q8_0 output head.
 * CPU time, not wall time: the figure does not move when other processes take the cores (this machine is shared).
 * Exit status 1 on any mismatch. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "kvant_quants.h"
int old_kvant_matmul_q8a_rounding(int type, const void *w, size_t row_bytes, int64_t n, int64_t row0, int64_t row1,
                                  const kvant_block_q8a *a, int64_t na, float *out, int64_t out_stride, int br);

static double cpu(void) { struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static int bsize(int t) { switch (t) { case 2: return 18; case 3: return 20; case 6: return 22; case 7: return 24; case 8: return 34;
                                        case 12: return 144; case 13: return 176; case 14: return 210; } return 0; }
static int belems(int t) { return t >= 12 ? 256 : 32; }
static const char *tname(int t) { switch (t) { case 2: return "Q4_0"; case 3: return "Q4_1"; case 6: return "Q5_0"; case 7: return "Q5_1";
                                               case 8: return "Q8_0"; case 12: return "Q4_K"; case 13: return "Q5_K"; case 14: return "Q6_K"; } return "?"; }

/* Random blocks with sane fp16 scales (d, and dmin / the second scale where the type has one). */
static uint8_t *random_weights(int t, int rows, int cols, size_t *rb_out) {
    const size_t rb = (size_t)cols / belems(t) * bsize(t);
    uint8_t *w = malloc(rows * rb);
    for (size_t i = 0; i < rows * rb; i++) w[i] = rand();
    for (int r = 0; r < rows; r++)
        for (int b = 0; b < cols / belems(t); b++) {
            uint8_t *p = w + r * rb + b * bsize(t);
            uint16_t h = 0x2000 + (rand() % 0x800), h2 = 0x2000 + (rand() % 0x800);
            if (t == 14) memcpy(p + 208, &h, 2);
            else { memcpy(p, &h, 2); if (t == 3 || t == 7 || t == 12 || t == 13) memcpy(p + 2, &h2, 2); }
        }
    *rb_out = rb;
    return w;
}

int main(void) {
    srand(7);
    int fails = 0;
    const int types[] = {2, 3, 6, 7, 8, 12, 13, 14};
    const int rows = 256, cols = 2048;
    for (int ti = 0; ti < 8; ti++) {
        const int t = types[ti];
        size_t rb;
        uint8_t *w = random_weights(t, rows, cols, &rb);
        for (int na = 1; na <= 40; na += (na < 10 ? 1 : 7)) {
            float *x = malloc(sizeof(float) * na * cols);
            for (int i = 0; i < na * cols; i++) x[i] = (rand() % 2001 - 1000) / 250.0f * ((i % 97) == 0 ? 20 : 1);
            kvant_block_q8a *a = malloc(sizeof(kvant_block_q8a) * na * cols / 32);
            kvant_quantize_row_act(kvant_act_format(t), x, a, na * cols);
            float *o1 = malloc(4 * na * rows), *o2 = malloc(4 * na * rows);
            for (int br = 0; br < 2; br++) {
                old_kvant_matmul_q8a_rounding(t, w, rb, cols, 3, rows - 5, a, na, o1, rows, br);
                kvant_matmul_q8a_rounding(t, w, rb, cols, 3, rows - 5, a, na, o2, rows, br);
                for (int i = 0; i < na; i++)
                    for (int r = 3; r < rows - 5; r++)
                        if (memcmp(&o1[i * rows + r], &o2[i * rows + r], 4)) {
                            if (fails < 10) printf("MISMATCH %s na %d rounding %d row %d act %d: %g vs %g\n", tname(t), na, br, r, i,
                                                   o1[i * rows + r], o2[i * rows + r]);
                            fails++;
                        }
            }
            free(x); free(a); free(o1); free(o2);
        }
        free(w);
    }
    printf("bit-identity (8 types, 1..38 activation rows, both roundings): %d mismatches\n\n", fails);
    printf("| weight | rows × cols | activation rows | base ms | new ms | base / new |\n|---|---|---:|---:|---:|---:|\n");
    /* Gemma 3 270M Q4_K_M: attn_q+k / ffn_gate+up Q5_0 (cols 640), attn_output Q4_K, ffn_down Q6_K, attn_v Q8_0. */
    const int shapes[][3] = {{6, 2048, 640}, {12, 640, 1024}, {14, 640, 2048}, {8, 1024, 640}};
    for (int s = 0; s < 8; s++) {
        const int t = shapes[s % 4][0], R = shapes[s % 4][1], C = shapes[s % 4][2], na = s < 4 ? 512 : 1;
        size_t rb;
        uint8_t *w = random_weights(t, R, C, &rb);
        float *x = malloc(sizeof(float) * na * C);
        for (int i = 0; i < na * C; i++) x[i] = (rand() % 2001 - 1000) / 250.0f;
        kvant_block_q8a *a = malloc(sizeof(kvant_block_q8a) * na * C / 32);
        kvant_quantize_row_act(kvant_act_format(t), x, a, na * C);
        float *o = malloc(4 * na * R);
        double bo = 1e9, bn = 1e9;
        for (int rep = 0; rep < (na == 1 ? 2000 : 7); rep++) {
            double t0 = cpu();
            old_kvant_matmul_q8a_rounding(t, w, rb, C, 0, R, a, na, o, R, 0);
            double t1 = cpu();
            kvant_matmul_q8a_rounding(t, w, rb, C, 0, R, a, na, o, R, 0);
            double t2 = cpu();
            if (t1 - t0 < bo) bo = t1 - t0;
            if (t2 - t1 < bn) bn = t2 - t1;
        }
        printf("| %s | %d × %d | %d | %.3f | %.3f | %.2f× |\n", tname(t), R, C, na, bo * 1e3, bn * 1e3, bo / bn);
        free(w); free(x); free(a); free(o);
    }
    /* Batched decode (2..16 activation rows, one per running sequence) with the weights cold, as in a decode step
     * (every layer's weights were last read a whole step, ~250 MB, ago): 64 copies of the matrix, cycled. */
    printf("\n| weight, cold (64 copies cycled) | rows × cols | activation rows | base ms | new ms | base / new |\n|---|---|---:|---:|---:|---:|\n");
    const int cold[][3] = {{6, 2048, 640}, {8, 1024, 640}, {8, 16384, 640}};
    const int cold_na[] = {2, 4, 8, 16};
    for (int s = 0; s < 3; s++)
        for (int k = 0; k < 4; k++) {
            const int t = cold[s][0], R = cold[s][1], C = cold[s][2], na = cold_na[k], copies = 64;
            size_t rb;
            uint8_t *w = random_weights(t, R * copies, C, &rb);
            float *x = malloc(sizeof(float) * na * C);
            for (int i = 0; i < na * C; i++) x[i] = (rand() % 2001 - 1000) / 250.0f;
            kvant_block_q8a *a = malloc(sizeof(kvant_block_q8a) * na * C / 32);
            kvant_quantize_row_act(kvant_act_format(t), x, a, na * C);
            float *o = malloc(4 * na * R);
            double to = 0, tn = 0;
            for (int rep = 0; rep < 3; rep++)
                for (int c = 0; c < copies; c++) {
                    const uint8_t *wc = w + (size_t)c * R * rb, *wd = w + (size_t)((c + copies / 2) % copies) * R * rb;
                    double t0 = cpu();
                    old_kvant_matmul_q8a_rounding(t, wc, rb, C, 0, R, a, na, o, R, 0);
                    double t1 = cpu();
                    kvant_matmul_q8a_rounding(t, wd, rb, C, 0, R, a, na, o, R, 0);
                    to += t1 - t0;
                    tn += cpu() - t1;
                }
            printf("| %s | %d × %d | %d | %.3f | %.3f | %.2f× |\n", tname(t), R, C, na, to * 1e3 / (3 * copies),
                   tn * 1e3 / (3 * copies), to / tn);
            free(w); free(x); free(a); free(o);
        }
    return fails != 0;
}
