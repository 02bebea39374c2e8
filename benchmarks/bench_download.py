"""Download throughput over loopback: our `download_model` against `curl -o`, same server, same run.

The fake hub (tests/hub_server.py) serves one generated file (300 MB by default); curl fetches the
CDN URL the hub redirects to, ours goes through the whole pipeline (model-info listing, HEAD,
resumable GET with sha256 computed while writing, size + sha256 verification, final rename).
Each side runs twice into a fresh folder; the best run counts. Prints MB/s for each and the
ratio ours/curl (goal >= 0.9), and against curl followed by sha256sum, which is the same work
as ours (a verified file). Ours hashes on a second thread while the bytes arrive, so on a busy
2-core machine the hash competes with the transfer for CPU.

    python benchmarks/bench_download.py [--mb 300] [--runs 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from hub_server import running_hub  # noqa: E402

from huozi_local.core.config import Paths  # noqa: E402
from huozi_local.core.fetch.download import download_model  # noqa: E402
from huozi_local.testing.tiny_model import write_plain_gguf  # noqa: E402

REPO = "bench/loopback-GGUF"
FILE = "bench.gguf"


def time_curl(url: str, folder: Path, verify: bool = False) -> float:
    """curl alone, or curl then `sha256sum` (the same work as ours: a verified file)."""
    target = folder / FILE
    start = time.perf_counter()
    subprocess.run(["curl", "-sS", "-L", "-o", str(target), url], check=True)
    if verify:
        subprocess.run(["sha256sum", str(target)], check=True, capture_output=True)
    elapsed = time.perf_counter() - start
    target.unlink()
    return elapsed


def time_ours(hub_url: str, folder: Path, size: int) -> float:
    paths = Paths(folder / "config", folder / "data", folder / "models", folder / "cache")
    start = time.perf_counter()
    result = download_model(f"hf:{REPO}/{FILE}", paths, endpoint=hub_url)
    elapsed = time.perf_counter() - start
    shutil.rmtree(folder / "models")
    assert result.bytes_downloaded == size and result.resumed_from == 0, result  # a full transfer
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=300)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("curl") is None:
        print("curl not found: the baseline needs it", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
        work = Path(tmp)
        source = write_plain_gguf(work / "served.gguf", args.mb * 1_000_000)
        size = source.stat().st_size
        with running_hub() as hub:
            entry = hub.add_file(REPO, FILE, source)
            cdn_url = f"{hub.cdn_url}/lfs/{entry.sha256}"
            curl_times, verified_times, our_times = [], [], []
            for run in range(args.runs):
                fresh = work / f"run{run}"
                fresh.mkdir()
                curl_times.append(time_curl(cdn_url, fresh))
                our_times.append(time_ours(hub.hub_url, fresh, size))
                if shutil.which("sha256sum"):
                    verified_times.append(time_curl(cdn_url, fresh, verify=True))
                shutil.rmtree(fresh)
        curl_mbs = size / min(curl_times) / 1e6
        our_mbs = size / min(our_times) / 1e6
    print(f"file: {size / 1e6:.1f} MB over loopback, best of {args.runs} (cpus: {os.cpu_count()})")
    print(f"curl -o          : {curl_mbs:8.1f} MB/s  (runs: {_fmt(curl_times)})")
    print(f"download_model() : {our_mbs:8.1f} MB/s  (runs: {_fmt(our_times)})")
    print(f"ratio ours/curl  : {our_mbs / curl_mbs:.2f}  (goal >= 0.9)")
    if verified_times:
        verified_mbs = size / min(verified_times) / 1e6
        print(f"curl + sha256sum : {verified_mbs:8.1f} MB/s  (runs: {_fmt(verified_times)})")
        print(f"ratio ours/(curl + sha256sum): {our_mbs / verified_mbs:.2f}  (same work: verified)")
    return 0


def _fmt(times: list[float]) -> str:
    return ", ".join(f"{t:.2f}s" for t in times)


if __name__ == "__main__":
    sys.exit(main())
