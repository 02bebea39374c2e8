"""Download speed against aria2c, on a stand-in mirror that caps each connection.

Users of hf-mirror and ModelScope commonly get about 4 MB/s per connection; hf-mirror's own
`hfd` script downloads with `aria2c -x`, which is what people reach for. The fake hub
(tests/hub_server.py) serves generated GGUF files on 127.0.0.1 with real HTTP ranges, each
connection paced at --cap MB/s; both tools run in their own process against it, in alternating
rounds (the best run of each counts):

1. a merged (plain) file: ours (`huozi-local download`, --connections) / `aria2c -x8 -s8`
   (goal >= 0.9);
2. an official-layout legacy file, downloaded and repaired in the stream / aria2c's transfer
   alone of the same file (goal >= 0.85), with the disk in use polled every 20 ms (goal: peak
   <= final size + 64 MiB);
3. unthrottled loopback: ours / today's single stream (the same command against a server that
   ignores Range, so it takes the one-stream path) (goal >= 1.0);
4. a download killed (`kill -9`) half way and run again: bytes the server sent in both runs /
   the file's size (goal <= 1.1).

aria2c is Debian's package, installed for the benchmark, not a dependency of the project:
    sudo apt-get install aria2

    python benchmarks/bench_download.py [--mb 132] [--cap 4] [--connections 8] [--runs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from hub_server import FakeHub, running_hub  # noqa: E402

from huozi_local.testing.legacy_gguf import write_legacy_gguf  # noqa: E402
from huozi_local.testing.tiny_model import write_plain_gguf  # noqa: E402

REPO = "bench/loopback-GGUF"
FILE = "bench.gguf"
HUOZI_REPO = "HIT-SCIR/huozi3-gguf"
LEGACY_FILE = "huozi3-q2_k.gguf"
MiB = 1 << 20


def legacy_file(path: Path, mb: int) -> int:
    """An official-layout (split-expert) file of about `mb` MB: real bytes, huozi vocabulary."""
    for n_ff in range(512, 32768, 256):
        size = write_legacy_gguf(path, n_layers=2, n_embd=1024, n_ff=n_ff, sparse=True)
        if size >= mb * 1e6:
            return write_legacy_gguf(path, n_layers=2, n_embd=1024, n_ff=n_ff)
    raise SystemExit("cannot make a legacy file that large")


class DiskPoll:
    """The most bytes a folder held at once (files' allocated blocks), sampled every 20 ms."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.peak = folder, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for path in self.folder.rglob("*"):
                try:
                    total += path.stat().st_blocks * 512 if path.is_file() else 0
                except OSError:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.02)

    def __enter__(self) -> DiskPoll:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def ours(hub: FakeHub, spec: str, home: Path, connections: int) -> dict[str, float]:
    """`huozi-local download` in its own process; its --json report."""
    shutil.rmtree(home, ignore_errors=True)
    done = subprocess.run(
        [sys.executable, "-m", "huozi_local", "download", spec, "--endpoint", hub.hub_url,
         "--connections", str(connections), "--json"],
        capture_output=True, text=True, env={**os.environ, "HUOZI_HOME": str(home)}, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"huozi-local download failed: {done.stderr}")
    return dict(json.loads(done.stdout))


def aria2c(url: str, folder: Path, connections: int) -> float:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    subprocess.run(
        ["aria2c", f"-x{connections}", f"-s{connections}", "-k1M", "--file-allocation=none",
         "--console-log-level=error", "--summary-interval=0", "--download-result=hide",
         "-d", str(folder), "-o", "out.bin", url],
        check=True,
    )  # fmt: skip
    return time.perf_counter() - started


def killed_and_resumed(hub: FakeHub, spec: str, home: Path, size: int, cap: float) -> float:
    """Bytes the server sent over a download killed half way and the rerun / the file's size."""
    shutil.rmtree(home, ignore_errors=True)
    hub.bytes_per_s, hub.stall_after_bytes = cap, hub.sent_so_far() + size // 2
    start = hub.sent_so_far()
    child = subprocess.Popen(
        [sys.executable, "-m", "huozi_local", "download", spec, "--endpoint", hub.hub_url],
        env={**os.environ, "HUOZI_HOME": str(home)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    while hub.sent_so_far() - start < size // 2:
        time.sleep(0.05)
    time.sleep(1.0)  # past a durable point: what arrived is recorded
    child.send_signal(signal.SIGKILL)
    child.wait()
    hub.stall_after_bytes = None  # the same mirror again, paced, so every byte sent is counted
    subprocess.run(
        [sys.executable, "-m", "huozi_local", "download", spec, "--endpoint", hub.hub_url],
        env={**os.environ, "HUOZI_HOME": str(home)}, capture_output=True, check=True,
    )  # fmt: skip
    return (hub.sent_so_far() - start) / size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=132, help="size of each file, MB")
    parser.add_argument("--cap", type=float, default=4.0, help="MB/s per connection")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("aria2c") is None:
        print("aria2c not found: sudo apt-get install aria2", file=sys.stderr)
        return 2
    cap = args.cap * 1e6
    with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
        work = Path(tmp)
        plain = write_plain_gguf(work / FILE, args.mb * 1_000_000)
        legacy = work / LEGACY_FILE
        legacy_size = legacy_file(legacy, args.mb)
        size = plain.stat().st_size
        with running_hub() as hub:
            entry = hub.add_file(REPO, FILE, plain)
            legacy_entry = hub.add_file(HUOZI_REPO, LEGACY_FILE, legacy)
            plain_url = f"{hub.cdn_url}/lfs/{entry.sha256}"
            legacy_url = f"{hub.cdn_url}/lfs/{legacy_entry.sha256}"
            spec = f"hf:{REPO}/{FILE}"
            home = work / "home"
            capped: dict[str, list[float]] = {"ours": [], "aria2c": [], "legacy": [], "la": []}
            peaks: list[int] = []
            final_sizes: list[int] = []
            hub.bytes_per_s = cap
            for _ in range(args.runs):
                capped["aria2c"].append(aria2c(plain_url, work / "aria", args.connections))
                capped["ours"].append(ours(hub, spec, home, args.connections)["seconds"])
                capped["la"].append(aria2c(legacy_url, work / "aria", args.connections))
                with DiskPoll(home) as poll:
                    report = ours(hub, "huozi3:q2_k", home, args.connections)
                peaks.append(poll.peak)
                final_sizes.append(Path(str(report["path"])).stat().st_size)
                capped["legacy"].append(report["seconds"])
            hub.bytes_per_s = None
            loopback: dict[str, list[float]] = {"ours": [], "single": []}
            for _ in range(args.runs):
                loopback["ours"].append(ours(hub, spec, home, args.connections)["seconds"])
                hub.ignore_range = True
                loopback["single"].append(ours(hub, spec, home, args.connections)["seconds"])
                hub.ignore_range = False
            resent = killed_and_resumed(hub, "huozi3:q2_k", home, legacy_size, cap)

    def best(times: list[float], n: int) -> float:
        return n / min(times) / 1e6

    print(
        f"files: {size / 1e6:.0f} MB merged, {legacy_size / 1e6:.0f} MB legacy; mirror cap "
        f"{args.cap:g} MB/s per connection; {args.connections} connections; best of {args.runs}"
    )
    print("\n| measurement | ours | baseline | ratio | goal |")
    print("|---|---|---|---|---|")
    ours_mbs, aria_mbs = best(capped["ours"], size), best(capped["aria2c"], size)
    print(f"| merged file, capped mirror (MB/s) | {ours_mbs:.1f} | aria2c {aria_mbs:.1f} | "
          f"{ours_mbs / aria_mbs:.2f} | >= 0.9 |")  # fmt: skip
    legacy_mbs, la_mbs = best(capped["legacy"], legacy_size), best(capped["la"], legacy_size)
    print(f"| legacy file downloaded and repaired, capped (MB/s) | {legacy_mbs:.1f} | aria2c "
          f"transfer only {la_mbs:.1f} | {legacy_mbs / la_mbs:.2f} | >= 0.85 |")  # fmt: skip
    peak_over = max(p - f for p, f in zip(peaks, final_sizes, strict=True)) / MiB
    print(f"| peak disk over the final file (MiB) | {peak_over:.1f} | | | <= 64 |")
    loop_mbs, single_mbs = best(loopback["ours"], size), best(loopback["single"], size)
    print(f"| unthrottled loopback (MB/s) | {loop_mbs:.0f} | single stream {single_mbs:.0f} | "
          f"{loop_mbs / single_mbs:.2f} | >= 1.0 |")  # fmt: skip
    print(f"| bytes sent, killed half way then resumed / file | {resent:.3f} | | | <= 1.1 |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
