/* The dlopen workload: burns in `before` for argv[1] seconds (the profiler reads the process's
 * mappings and tables meanwhile), then dlopen()s the library argv[2] (plugin.c) and calls its
 * plugin_burn for argv[3] seconds: code mapped after the process's tables were loaded. Built by
 * the tests with -O2 -fomit-frame-pointer. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
volatile unsigned long sink;
__attribute__((noinline)) void before(int seconds) {
  time_t end = time(0) + seconds;
  while (time(0) < end)
    for (int i = 0; i < 100000; i++) sink += i;
  sink++;
}
int main(int argc, char **argv) {
  if (argc < 4) return 2;
  before(atoi(argv[1]));
  void *lib = dlopen(argv[2], RTLD_NOW);
  if (!lib) {
    fprintf(stderr, "%s\n", dlerror());
    return 1;
  }
  void (*burn)(int) = (void (*)(int))dlsym(lib, "plugin_burn");
  if (!burn) return 1;
  burn(atoi(argv[3]));
  sink++;
  return 0;
}
