"""Profiling workload: `outer` calls `hot_a` (3 parts) and `hot_b` (1 part) for SECONDS (argv[1]);
sums stay below 2**16 so every iteration costs the same (a longer int costs more)."""
import sys
import time


def hot_a(n):
    s = 0
    for i in range(n):
        s = (s + i * 7) & 0xFFFF
    return s


def hot_b(n):
    s = 0
    for i in range(n):
        s = (s + i * 3) & 0xFFFF
    return s


def outer(spent):
    t0 = time.thread_time() if spent else 0
    hot_a(30000)
    t1 = time.thread_time() if spent else 0
    hot_b(10000)
    if spent:
        spent[0] += t1 - t0
        spent[1] += time.thread_time() - t1


# With argv[2], the CPU time each leaf took, as the process measures it, is written there.
spent = [0.0, 0.0] if len(sys.argv) > 2 else None
end = time.time() + float(sys.argv[1] if len(sys.argv) > 1 else 5)
while time.time() < end:
    outer(spent)
if spent:
    with open(sys.argv[2], "w") as f:
        f.write(f"{spent[0] / spent[1]:.4f}\n")
