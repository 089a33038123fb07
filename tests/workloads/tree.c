/* The unwinding workload, C: a call tree five deep under main, three times as much CPU in
 * leaf_a as in leaf_b, for SECONDS (argv[1]). Built by the tests with -O2
 * -fomit-frame-pointer: rbp is an ordinary register here, and level2 keeps a path on its stack,
 * which a frame-pointer walk reads as return addresses. `sink++` after each call keeps the
 * calls from becoming jumps (a tail call leaves no frame to find). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
volatile unsigned long sink;
/* With a file name as argv[2], the CPU time each leaf took is measured and their ratio written
 * there at the end (what a profile's split is checked against). */
static int timed;
static double spent_a, spent_b;
static double cpu(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}
__attribute__((noinline)) void leaf_a(void) { for (int i = 0; i < 300000; i++) sink += i * 7; }
__attribute__((noinline)) void leaf_b(void) { for (int i = 0; i < 100000; i++) sink += i * 3; }
__attribute__((noinline)) void level4(void) {
  double t0 = timed ? cpu() : 0;
  leaf_a();
  double t1 = timed ? cpu() : 0;
  leaf_b();
  if (timed) {
    spent_a += t1 - t0;
    spent_b += cpu() - t1;
  }
  sink++;
}
__attribute__((noinline)) void level3(void) { level4(); sink++; }
__attribute__((noinline)) void level2(const char *p) {
  char path[64];
  strncpy(path, p, sizeof path);
  sink += path[5];
  level3();
  sink += path[9];
}
__attribute__((noinline)) void level1(void) { level2("/usr/lib/oxeye/bar/baz.so"); sink++; }
int main(int argc, char **argv) {
  time_t end = time(0) + (argc > 1 ? atoi(argv[1]) : 5);
  timed = argc > 2;
  while (time(0) < end) level1();
  if (timed) {
    FILE *f = fopen(argv[2], "w");
    if (!f) return 1;
    fprintf(f, "%.4f\n", spent_a / spent_b);
    fclose(f);
  }
  return 0;
}
