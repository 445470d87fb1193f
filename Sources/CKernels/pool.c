/* Fork-join pool with spinning-then-blocking workers (see kvant_pool.h). Linux futexes; elsewhere the workers
 * fall back to short sleeps once their spin is over. */
#define _GNU_SOURCE
#include "kvant_pool.h"
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <immintrin.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

struct kvant_pool {
    int threads;
    int spin_us;
    pthread_t *workers;
    /* Job generation: bumped (release) after the job fields below are written; workers wait on it (futex word). */
    _Atomic uint32_t gen;
    /* (generation << 32) | next task index: a task is claimed by a CAS that also checks the generation, so a worker
     * that wakes up late can never claim a task of a later job with the fields of an earlier one. */
    _Atomic uint64_t claim;
    _Atomic int64_t done;      /* tasks finished in the current job */
    _Atomic int sleepers;      /* workers blocked on `gen` */
    _Atomic int stop;
    /* The job: written only while no task of any generation can be claimed (see kvant_pool_run). */
    _Atomic int64_t tasks;
    _Atomic(kvant_pool_task) task;
    _Atomic(void *) ctx;
};

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec * 1e-3;
}

static void futex_wait(_Atomic uint32_t *addr, uint32_t expected) {
#ifdef __linux__
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
#else
    (void)addr; (void)expected;
    struct timespec ts = {0, 50000};
    nanosleep(&ts, NULL);
#endif
}

static void futex_wake_all(_Atomic uint32_t *addr) {
#ifdef __linux__
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, 0x7fffffff, NULL, NULL, 0);
#else
    (void)addr;
#endif
}

/* Claims and runs tasks of generation g until none is left. */
static void run_tasks(kvant_pool *p, uint32_t g) {
    for (;;) {
        uint64_t c = atomic_load_explicit(&p->claim, memory_order_acquire);
        for (;;) {
            if ((uint32_t)(c >> 32) != g || (int64_t)(c & 0xffffffffu) >= atomic_load_explicit(&p->tasks, memory_order_relaxed))
                return;
            if (atomic_compare_exchange_weak_explicit(&p->claim, &c, c + 1, memory_order_acq_rel, memory_order_acquire)) break;
        }
        /* The claim succeeded for generation g, so the job fields are g's until this task is counted done. */
        kvant_pool_task task = atomic_load_explicit(&p->task, memory_order_relaxed);
        task(atomic_load_explicit(&p->ctx, memory_order_relaxed), (int64_t)(c & 0xffffffffu));
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
    }
}

static void *worker_main(void *arg) {
    kvant_pool *p = arg;
    uint32_t seen = atomic_load_explicit(&p->gen, memory_order_acquire);
    for (;;) {
        uint32_t g = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (g == seen) {
            /* Spin for the next job, then block. */
            const double t0 = now_us();
            int k = 0;
            while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen && !atomic_load(&p->stop)) {
                _mm_pause();
                if (++k % 256 == 0 && now_us() - t0 > p->spin_us) {
                    atomic_fetch_add(&p->sleepers, 1);
                    if (atomic_load(&p->gen) == seen && !atomic_load(&p->stop)) futex_wait(&p->gen, seen);
                    atomic_fetch_sub(&p->sleepers, 1);
                    k = 0;
                }
            }
            if (atomic_load(&p->stop)) return NULL;
        }
        seen = g;
        run_tasks(p, g);
    }
}

kvant_pool *kvant_pool_create(int threads, int spin_us) {
    if (threads < 1) threads = 1;
    kvant_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->threads = threads;
    p->spin_us = spin_us < 0 ? 0 : spin_us;
    atomic_init(&p->gen, 0);
    atomic_init(&p->claim, 0);
    atomic_init(&p->done, 0);
    atomic_init(&p->sleepers, 0);
    atomic_init(&p->stop, 0);
    p->workers = calloc((size_t)threads, sizeof(pthread_t));
    if (!p->workers) { free(p); return NULL; }
    for (int i = 1; i < threads; i++) {
        if (pthread_create(&p->workers[i], NULL, worker_main, p) != 0) {
            p->threads = i;
            kvant_pool_destroy(p);
            return NULL;
        }
    }
    return p;
}

void kvant_pool_destroy(kvant_pool *p) {
    if (!p) return;
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->gen, 1);
    futex_wake_all(&p->gen);
    for (int i = 1; i < p->threads; i++) pthread_join(p->workers[i], NULL);
    free(p->workers);
    free(p);
}

int kvant_pool_threads(const kvant_pool *p) { return p ? p->threads : 1; }

void kvant_pool_run(kvant_pool *p, int64_t tasks, kvant_pool_task task, void *ctx) {
    if (tasks <= 0) return;
    if (!p || p->threads == 1 || tasks == 1) {
        for (int64_t i = 0; i < tasks; i++) task(ctx, i);
        return;
    }
    const uint32_t g = atomic_load_explicit(&p->gen, memory_order_relaxed) + 1;
    /* 1. The claim word moves to generation g first: a worker still holding generation g-1 (woken late) fails its
     *    CAS from now on, so it cannot pair a task index with the fields written next.
     * 2. The fields. 3. The generation (seq_cst, before the sleepers check: no lost wake-up); workers that see g
     *    (acquire) see the fields. */
    atomic_store_explicit(&p->claim, (uint64_t)g << 32, memory_order_seq_cst);
    atomic_store_explicit(&p->task, task, memory_order_relaxed);
    atomic_store_explicit(&p->ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&p->tasks, tasks, memory_order_relaxed);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store(&p->gen, g);
    if (atomic_load(&p->sleepers) > 0) futex_wake_all(&p->gen);
    run_tasks(p, g);
    /* Tasks still running on workers: spin a little, then give the core away between checks. */
    int k = 0;
    while (atomic_load_explicit(&p->done, memory_order_acquire) < tasks) {
        if (++k < 4096) _mm_pause();
        else sched_yield();
    }
}
