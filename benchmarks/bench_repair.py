"""Repair throughput against `cp` of the same file, and the repair's peak memory.

Writes a synthetic huozi-shaped legacy GGUF (full vocabulary, layers of 8 split experts, q4_0
sized, >= 1 GB of real bytes), then in the same run, each twice with the best time kept, after
reading the source once so both start from the same warm page cache:
  - `cp SRC DST`                                  (the baseline)
  - repair hashing the source as it streams       (what `huozi-local repair` does)
  - repair with the sha256 passed in              (what the download does after verifying)
Each repair runs in a child process timed inside the child (interpreter start-up excluded) and
its peak RSS comes from wait4's rusage for that child. Goals: repair/cp >= 0.8, peak RSS < 300 MB.
Deletes its files at the end.

    python benchmarks/bench_repair.py [--size-gb 1.2] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from huozi_local.testing.legacy_gguf import write_legacy_gguf

CHILD = """
import json, sys, time
from pathlib import Path
from huozi_local.core.gguf.repair import repair_gguf
src, dst, sha = sys.argv[1], sys.argv[2], sys.argv[3] or None
start = time.perf_counter()
result = repair_gguf(Path(src), Path(dst), source_sha256=sha)
print(json.dumps({"seconds": time.perf_counter() - start, "sha": result.source_sha256}))
"""

BASELINE_CHILD = "import huozi_local.core.gguf.repair, huozi_local.core.gguf.header, gguf"


def warm(path: Path) -> None:
    """Same start for every run: no dirty pages of an earlier run pending, the source cached."""
    os.sync()
    with open(path, "rb") as handle:
        while handle.read(16 << 20):
            pass


def run_child(argv: list[str]) -> tuple[str, int]:
    """Run a child; return its stdout and its own peak RSS in bytes (Linux reports KiB)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child failed with {proc.returncode}: {argv}")
    return out, usage.ru_maxrss * 1024


def time_cp(src: Path, dst: Path) -> float:
    warm(src)
    start = time.perf_counter()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    seconds = time.perf_counter() - start
    dst.unlink()
    return seconds


def time_repair(src: Path, dst: Path, sha: str) -> tuple[float, int]:
    warm(src)
    out, rss = run_child([sys.executable, "-c", CHILD, str(src), str(dst), sha])
    dst.unlink()
    return float(json.loads(out)["seconds"]), rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.2)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    n_embd, n_ff = 1024, 3584
    per_layer = 24 * n_embd * n_ff * 18 // 32 + 3 * n_embd * n_embd * 18 // 32
    n_layers = max(1, round(args.size_gb * 1e9 / per_layer))
    needed = 3 * int(args.size_gb * 1e9) + (1 << 30)
    free = shutil.disk_usage(args.dir).free
    if free < needed:
        print(f"need {needed / 1e9:.1f} GB free in {args.dir}, have {free / 1e9:.1f} GB")
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-repair-", dir=args.dir))
    try:
        src = work / "legacy.gguf"
        size = write_legacy_gguf(src, n_layers=n_layers, n_embd=n_embd, n_ff=n_ff)
        print(f"synthetic legacy file: {size / 1e9:.3f} GB, {n_layers} layers x 8 experts")
        mb = size / 1e6
        # Interleaved rounds, so drifting load on a shared machine hits every variant alike.
        cp_times: list[float] = []
        runs: dict[str, list[tuple[float, int]]] = {"hashing": [], "sha given": []}
        for _ in range(2):
            cp_times.append(time_cp(src, work / "copy.gguf"))
            for label, sha in (("hashing", ""), ("sha given", "0" * 64)):
                runs[label].append(time_repair(src, work / "repaired.gguf", sha))
        cp_best = min(cp_times)
        results = {k: (min(r[0] for r in v), max(r[1] for r in v)) for k, v in runs.items()}
        _, base_rss = run_child([sys.executable, "-c", BASELINE_CHILD])
        print(f"cp:                       {mb / cp_best:8.0f} MB/s  ({cp_best:.2f} s)")
        for label, (seconds, rss) in results.items():
            print(
                f"repair ({label + '):':12} {mb / seconds:8.0f} MB/s  ({seconds:.2f} s)  "
                f"ratio repair/cp {cp_best / seconds:.2f} (goal >= 0.8)  "
                f"peak RSS {rss / 2**20:.0f} MiB (goal < 300)"
            )
        print(f"peak RSS of a child that only imports the repair: {base_rss / 2**20:.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
