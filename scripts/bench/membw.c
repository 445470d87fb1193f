/* Memory read bandwidth, for `make bench`'s decode bound (decode streams every weight once per token).
 *
 *   membw [threads=2] [MiB=512] [passes=12]
 *
 * Allocates MiB of memory, writes it once, then `threads` threads each read their contiguous share
 * (summing 64-bit words; gcc -O3 -march=native vectorizes the loop to full-width loads) in lock-step
 * passes separated by a barrier. Prints one JSON line: the median and best pass in GB/s (1e9 bytes/s).
 * The buffer is far larger than the caches (last-level cache of these machines: a few tens of MB).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int nthreads, passes;
static size_t words;
static uint64_t *buf;
static pthread_barrier_t barrier;
static double starts[64], ends[64];
static volatile uint64_t sink;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *worker(void *arg) {
    int id = (int)(intptr_t)arg;
    size_t lo = words * id / nthreads, hi = words * (id + 1) / nthreads;
    for (int p = 0; p < passes; p++) {
        pthread_barrier_wait(&barrier);
        if (id == 0) starts[p] = now();
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (size_t i = lo; i + 4 <= hi; i += 4) {
            s0 += buf[i]; s1 += buf[i + 1]; s2 += buf[i + 2]; s3 += buf[i + 3];
        }
        sink += s0 + s1 + s2 + s3;
        pthread_barrier_wait(&barrier);
        if (id == 0) ends[p] = now();
    }
    return NULL;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    nthreads = argc > 1 ? atoi(argv[1]) : 2;
    size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 512;
    passes = argc > 3 ? atoi(argv[3]) : 12;
    if (nthreads < 1 || nthreads > 64 || mib < 16 || passes < 1 || passes > 64) {
        fprintf(stderr, "usage: membw [threads 1..64] [MiB >= 16] [passes 1..64]\n");
        return 2;
    }
    words = mib * 1024 * 1024 / 8;
    if (posix_memalign((void **)&buf, 64, words * 8)) { perror("posix_memalign"); return 1; }
    for (size_t i = 0; i < words; i++) buf[i] = i;
    pthread_barrier_init(&barrier, NULL, nthreads);
    pthread_t th[64];
    for (int t = 1; t < nthreads; t++) pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t);
    worker((void *)0);
    for (int t = 1; t < nthreads; t++) pthread_join(th[t], NULL);
    double gbs[64];
    for (int p = 0; p < passes; p++) gbs[p] = words * 8.0 / (ends[p] - starts[p]) / 1e9;
    qsort(gbs, passes, sizeof gbs[0], cmp);
    printf("{\"threads\": %d, \"mib\": %zu, \"passes\": %d, \"median_gbs\": %.2f, \"best_gbs\": %.2f}\n",
           nthreads, mib, passes, gbs[passes / 2], gbs[passes - 1]);
    return 0;
}
