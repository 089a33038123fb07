"""The Python profiling workload: `outer` calls `hot_a` and `hot_b`, three times as much work in
hot_a, for SECONDS (the first argument)."""
import sys
import time


def hot_a(n):
    s = 0
    for i in range(n):
        s += i * 7
    return s


def hot_b(n):
    s = 0
    for i in range(n):
        s += i * 3
    return s


def outer():
    hot_a(30000)
    hot_b(10000)


end = time.time() + float(sys.argv[1] if len(sys.argv) > 1 else 5)
while time.time() < end:
    outer()
