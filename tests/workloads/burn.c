// A CPU-bound workload for the profile tests and benchmarks, built by them with frame pointers
// (gcc -O1 -fno-omit-frame-pointer -g). It prints its pid, waits for a line on stdin, then
// spends its CPU in hot_a three times as long as in hot_b (the same loop, three times as
// often, in rounds of jittered length so no round lines up with the sampling period) on
// THREADS threads until each has spent SECONDS of CPU time; prints `done <cpu ns> <rounds>`
// (the process's CPU time and the work done) and exits when stdin closes. With `-` as SECONDS
// it works until stdin closes (a load for overhead benchmarks: rounds per second is its
// throughput). A round is N to 3N iterations of hot_b (default 2000, about 20 µs a round); a
// larger N makes fewer, longer calls (for uprobes on hot_a). With DEPTH > 0, each block of
// rounds runs below a chain of 1 to DEPTH extra frames (`descend`), so stacks vary in depth
// as a real program's do.
//
//     burn SECONDS [THREADS [N [DEPTH]]]
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned long sink;
static volatile int stop;
static double seconds;
static unsigned long base = 2000;
static unsigned depth;
static volatile unsigned long rounds;

static double cpu_now(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

// Its own frame (O0): gcc 12 leaves a leaf function without one despite
// -mno-omit-leaf-frame-pointer, and a frame-pointer unwinder would then skip its caller.
__attribute__((noinline, optimize("O0"))) static unsigned long spin(unsigned long n,
                                                                   unsigned long x) {
    for (unsigned long i = 0; i < n; i++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}

// Three calls of the same loop against one: the per-call cost is tripled too, so the split of
// CPU time is 3:1 exactly, not 3:1 less the call overhead.
__attribute__((noinline)) void hot_a(unsigned long n) {
    sink = spin(n, sink);
    sink = spin(n, sink);
    sink = spin(n, sink);
}
__attribute__((noinline)) void hot_b(unsigned long n) { sink = spin(n, sink); }

// 64 rounds, `levels` frames further down.
__attribute__((noinline, optimize("O0"))) static unsigned descend(unsigned levels,
                                                                 unsigned seed) {
    if (levels > 0)
        return descend(levels - 1, seed) + 1;
    for (int r = 0; r < 64; r++) {
        seed = seed * 1103515245u + 12345u;
        unsigned long n = base + (seed >> 16) % (2 * base);
        hot_a(n);
        hot_b(n);
    }
    __atomic_add_fetch(&rounds, 64, __ATOMIC_RELAXED);
    return seed;
}

static void *work(void *arg) {
    unsigned seed = (unsigned)(unsigned long)arg + 1;
    double start = cpu_now(CLOCK_THREAD_CPUTIME_ID);
    // The clock is read once in 64 rounds.
    while (!stop && (seconds < 0 || cpu_now(CLOCK_THREAD_CPUTIME_ID) - start < seconds)) {
        unsigned levels = depth ? 1 + seed % depth : 0;
        seed = descend(levels, seed) - levels;
    }
    return NULL;
}

static void *watch_stdin(void *arg) {
    char line[64];
    (void)arg;
    while (fgets(line, sizeof line, stdin)) {
    }
    stop = 1;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: burn SECONDS|- [THREADS [N [DEPTH]]]\n");
        return 2;
    }
    seconds = strcmp(argv[1], "-") == 0 ? -1 : atof(argv[1]);
    int threads = argc > 2 ? atoi(argv[2]) : 1;
    if (argc > 3)
        base = strtoul(argv[3], NULL, 10);
    if (argc > 4)
        depth = (unsigned)atoi(argv[4]);
    printf("%d\n", getpid());
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        return 1;
    pthread_t watcher, t[64];
    pthread_create(&watcher, NULL, watch_stdin, NULL);
    double start = cpu_now(CLOCK_PROCESS_CPUTIME_ID);
    for (int i = 0; i < threads && i < 64; i++)
        pthread_create(&t[i], NULL, work, (void *)(unsigned long)i);
    for (int i = 0; i < threads && i < 64; i++)
        pthread_join(t[i], NULL);
    printf("done %.0f %lu\n", (cpu_now(CLOCK_PROCESS_CPUTIME_ID) - start) * 1e9, rounds);
    fflush(stdout);
    pthread_join(watcher, NULL);
    return 0;
}
