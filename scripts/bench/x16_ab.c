/* The x16 repack (Sources/CKernels/q0x16.c) against ggml's layout (kvant_matmul_q8a: the one-row GEMV, the batched-decode
 * kernel, the tiles) on Gemma 3 270M's Q5_0 and Q8_0 shapes: one thread's CPU time per product, best of 5, with the
 * weights cold (64 copies cycled, larger than the caches), 1 / 4 / 8 / 16 activation rows; and the time to repack.
 * Built and run by scripts/bench/x16-ab.sh. */
#include "kvant_quants.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
static double cpu(void) { struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(void) {
    if (!kvant_q0x16_available()) { printf("no AVX-512 VNNI: the x16 kernels do not run here\n"); return 0; }
    const int shapes[][3] = {{6, 2048, 640}, {6, 1024, 640}, {8, 256, 640}, {8, 16384, 640}};
    const int ms[] = {1, 4, 8, 16};
    printf("| weight, cold | rows × cols | activation rows | ggml layout ms | x16 ms | ggml / x16 |\n|---|---|---:|---:|---:|---:|\n");
    for (int s = 0; s < 4; s++) {
        const int t = shapes[s][0], R = shapes[s][1], N = shapes[s][2], bs = t == 8 ? 34 : 22, copies = 64;
        const size_t rb = (size_t)N / 32 * bs;
        uint8_t *W = malloc(rb * R * copies), *X = malloc(rb * R * copies);
        srand(s + 1);
        for (size_t i = 0; i < rb * R * copies; i++) W[i] = (uint8_t)rand();
        for (size_t r = 0; r < (size_t)R * N / 32 * copies; r++) {
            _Float16 h = (_Float16)(0.001f + 0.01f * (rand() % 100) / 100.f);
            memcpy(W + r * bs, &h, 2);
        }
        double t0 = cpu();
        for (int c = 0; c < copies; c++) kvant_repack_q0x16(t, W + c * rb * R, rb, R, N, X + c * rb * R);
        const double repack = (cpu() - t0) / (copies * rb * R) * 1e9;   /* ns per byte */
        float *x = malloc(sizeof(float) * 16 * N);
        for (int i = 0; i < 16 * N; i++) x[i] = (rand() % 2001 - 1000) / 500.f;
        kvant_block_q8a *A = malloc(sizeof(kvant_block_q8a) * 16 * N / 32);
        kvant_quantize_row_act(KVANT_ACT_Q8_0, x, A, 16 * N);
        float *O = malloc(sizeof(float) * 16 * R);
        for (int k = 0; k < 4; k++) {
            const int m = ms[k];
            double best[2] = {1e9, 1e9};
            for (int rep = 0; rep < 5; rep++)
                for (int v = 0; v < 2; v++) {
                    t0 = cpu();
                    for (int c = 0; c < copies; c++) {
                        if (v == 0) kvant_matmul_q8a(t, W + c * rb * R, rb, N, 0, R, A, m, O, R);
                        else kvant_matmul_q0x16(t, X + c * rb * R, N, 0, R, A, m, O, R, 0);
                    }
                    const double dt = (cpu() - t0) / copies;
                    if (dt < best[v]) best[v] = dt;
                }
            printf("| %s | %d × %d | %d | %.3f | %.3f | %.2f× |\n", t == 8 ? "Q8_0" : "Q5_0", R, N, m, best[0] * 1e3, best[1] * 1e3,
                   best[0] / best[1]);
        }
        printf("| %s repack | %d × %d | | | %.2f ns/byte | |\n", t == 8 ? "Q8_0" : "Q5_0", R, N, repack);
        free(W); free(X); free(x); free(A); free(O);
    }
    return 0;
}
