#!/usr/bin/env python3
"""What a Python user pays for a scoped handle: N `with` blocks, each over a fresh
instance of a minimal context manager whose exit only counts (the Python counterpart
of Benchmarks/micro_tbc.lua).

  python3 Benchmarks/micro_with.py N
"""
import sys

released = 0


class Handle:
    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        global released
        released += 1


def main(argv):
    n = int(argv[1]) if len(argv) > 1 else 1000000
    for _ in range(n):
        with Handle():
            pass
    print("released=%d" % released)


if __name__ == "__main__":
    main(sys.argv)
