#!/usr/bin/env python3
# A stand-in rank for the launcher's `output` test:  chatter.py LINES
# Writes LINES numbered lines to stdout (every 10th also to stderr), each in two unbuffered write()
# calls with a pause between them now and then, so a launcher that forwarded raw chunks instead of
# whole lines would interleave ranks mid-line. Some lines are longer than a pipe's atomic-write limit.
# Ends with a line holding a byte that is not UTF-8, and a last line without a newline.
import os
import sys
import time

rank = os.environ["RANK"]
lines = int(sys.argv[1])


def payload(i):
    # Mostly short lines, every 97th one 10000 bytes (> PIPE_BUF, so written in several pieces).
    return "x" * (10000 if i % 97 == 0 else 1 + i % 50)


for i in range(lines):
    head = f"rank={rank} line={i} ".encode()
    body = payload(i).encode() + b"\n"
    for fd in (1, 2) if i % 10 == 0 else (1,):
        os.write(fd, head)
        if i % 25 == 0:
            time.sleep(0.001)   # give the other rank time to write in between
        os.write(fd, body)

os.write(1, f"rank={rank} bad byte: \xff end\n".encode("latin-1"))
os.write(1, f"rank={rank} no newline at end".encode())
