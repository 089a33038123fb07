/* The library dlopen.c loads: two calls deep under plugin_burn. Built by the tests with -O2
 * -fomit-frame-pointer -fPIC -shared; `plugin_sink++` after each call keeps it a call. */
#include <time.h>
volatile unsigned long plugin_sink;
__attribute__((noinline)) void plugin_leaf(void) {
  for (int i = 0; i < 100000; i++) plugin_sink += i * 5;
}
__attribute__((noinline)) void plugin_level(void) { plugin_leaf(); plugin_sink++; }
void plugin_burn(int seconds) {
  time_t end = time(0) + seconds;
  while (time(0) < end) plugin_level();
  plugin_sink++;
}
