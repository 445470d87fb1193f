#ifndef KVANT_POOL_H
#define KVANT_POOL_H
/* A small fork-join pool for the decode hot path: `threads - 1` worker threads plus the caller run the tasks
 * 0..<n of one job, claiming them one at a time from a shared counter (so the caller does all of them when a worker
 * is late, e.g. because another process holds its core).
 *
 * Workers spin (with `pause`) for up to `spin_us` microseconds after a job, so the next job of the same token
 * starts without a wake-up system call (decode runs ~75 short jobs per token); then they block on a futex. The
 * caller, after its own tasks, spins briefly for tasks still running elsewhere and then yields its core
 * (sched_yield), so it never starves a worker that shares its core with it. */
#include <stdint.h>

typedef void (*kvant_pool_task)(void *ctx, int64_t task);
typedef struct kvant_pool kvant_pool;

/* A pool with `threads - 1` workers (threads ≥ 1; 1 = the caller runs everything). NULL if a thread cannot be
 * created. spin_us: how long idle workers spin before blocking (0 = block at once). */
kvant_pool *kvant_pool_create(int threads, int spin_us);
/* Stops and joins the workers. */
void kvant_pool_destroy(kvant_pool *pool);
/* Runs task(ctx, i) for every i in [0, tasks) over the pool and the calling thread; returns when all are done.
 * One job at a time per pool (not re-entrant; not callable from inside a task). */
void kvant_pool_run(kvant_pool *pool, int64_t tasks, kvant_pool_task task, void *ctx);
/* Number of threads (workers + the caller). */
int kvant_pool_threads(const kvant_pool *pool);

#endif
