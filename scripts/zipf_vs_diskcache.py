#!/usr/bin/env python3
"""Hit ratio of FileCache and of Python's diskcache under one byte budget,
on the same Zipf requests (cache-aside: a get, and a set after a miss).

    python3 scripts/zipf_vs_diskcache.py [keys requests value_bytes budget_share exponent]

Runs `cargo run --release --example zipf_hit_ratio`, which writes the
requests it drew to <dir>/requests.bin, then replays them against
diskcache.Cache(size_limit=<the same budget>) with its default eviction
policy (least-recently-stored) and with least-recently-used. diskcache is
installed into a virtual environment under the work directory when it is
missing. The figures go to docs/benchmarks.md.
"""

import os
import struct
import subprocess
import sys
import tempfile
import time


def diskcache_module(work):
    try:
        import diskcache  # noqa: F401

        return sys.executable
    except ImportError:
        venv = os.path.join(work, "venv")
        if not os.path.exists(os.path.join(venv, "bin", "python")):
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
            subprocess.run(
                [os.path.join(venv, "bin", "pip"), "install", "-q", "diskcache==5.6.3"],
                check=True,
            )
        return os.path.join(venv, "bin", "python")


REPLAY = r"""
import struct, sys, time, shutil, os
import diskcache
trace_path, directory, budget, value_bytes, policy = sys.argv[1:6]
budget, value_bytes = int(budget), int(value_bytes)
with open(trace_path, "rb") as f:
    data = f.read()
keys = struct.unpack("<%dI" % (len(data) // 4), data)
shutil.rmtree(directory, ignore_errors=True)
cache = diskcache.Cache(directory, size_limit=budget, eviction_policy=policy)
value = b"v" * value_bytes
hits = 0
start = time.monotonic()
for key in keys:
    name = "key-%d" % key
    if cache.get(name) is not None:
        hits += 1
    else:
        cache.set(name, value)
took = time.monotonic() - start
print("diskcache (%s): hit ratio %.4f (%d of %d), budget %d bytes, volume %d bytes, %.2f s"
      % (policy, hits / len(keys), hits, len(keys), budget, cache.volume(), took))
"""


def main():
    keys, requests, value_bytes, share, exponent = (sys.argv[1:6] + [None] * 5)[:5]
    keys = keys or "100000"
    requests = requests or "500000"
    value_bytes = value_bytes or "1000"
    share = share or "0.1"
    exponent = exponent or "0.9"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    work = os.path.join(tempfile.gettempdir(), "layercache-zipf")
    os.makedirs(work, exist_ok=True)
    print("keys %s, requests %s, values of %s bytes, budget %s of the data, Zipf exponent %s"
          % (keys, requests, value_bytes, share, exponent))
    subprocess.run(
        ["cargo", "run", "--release", "-q", "--example", "zipf_hit_ratio", "--",
         work, keys, requests, value_bytes, share, exponent],
        cwd=repo, check=True,
    )
    budget = int(int(keys) * int(value_bytes) * float(share))
    python = diskcache_module(work)
    for policy in ["least-recently-stored", "least-recently-used"]:
        subprocess.run(
            [python, "-c", REPLAY, os.path.join(work, "requests.bin"),
             os.path.join(work, "diskcache"), str(budget), value_bytes, policy],
            check=True,
        )


if __name__ == "__main__":
    main()
