"""llama.cpp's own tools, built from the llama.cpp the installed llama-cpp-python vendors.

`llama-bench` (decode and prompt speed with no sampling) and `llama-completion` (llama.cpp's own
generation loop: decode, its sampler chain and printing, per token).

A ratio against llama-bench only means something when both sides run the same ggml kernels, so the
baseline is built from the sdist of the installed llama-cpp-python version (its `vendor/llama.cpp`),
in Release like scikit-build-core builds the wheel, with llama.cpp's default native CPU flags and
the `CMAKE_ARGS` the wheel was built with when they are in the environment. The build takes several
minutes on two cores, so the binaries are cached under `~/.cache/huozi-local/llama-bench-<version>`
(a second tool reuses the libraries the first one built: seconds).

Run: python benchmarks/llama_bench_build.py [--version 0.3.36] [--sdist-dir /tmp/sdist]
[--target llama-completion] (prints the path of the binary).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

CACHE_ROOT = Path.home() / ".cache" / "huozi-local"
TARGET = "llama-bench"


def installed_version() -> str:
    return importlib.metadata.version("llama_cpp_python")


def sdist_path(version: str, sdist_dir: Path) -> Path:
    """The sdist of `version`, downloaded with pip into `sdist_dir` when it is not there yet."""
    for name in (f"llama_cpp_python-{version}.tar.gz", f"llama-cpp-python-{version}.tar.gz"):
        if (sdist_dir / name).exists():
            return sdist_dir / name
    sdist_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"llama-cpp-python=={version}",
            "-d",
            str(sdist_dir),
        ],
        check=True,
    )
    found = sorted(sdist_dir.glob(f"llama[-_]cpp[-_]python-{version}.tar.gz"))
    if not found:
        raise SystemExit(f"pip download gave no sdist of llama-cpp-python {version} in {sdist_dir}")
    return found[0]


def build_llama_bench(
    version: str, sdist_dir: Path, cache_root: Path = CACHE_ROOT, jobs: int = 2
) -> Path:
    """Path of a `llama-bench` binary for `version`, built once and then reused."""
    return build_llama_tool(version, sdist_dir, TARGET, cache_root, jobs)


def build_llama_tool(
    version: str, sdist_dir: Path, target: str, cache_root: Path = CACHE_ROOT, jobs: int = 2
) -> Path:
    """Path of llama.cpp's `target` binary for `version`, built once and then reused."""
    home = cache_root / f"llama-bench-{version}"
    binary = home / "build" / "bin" / target
    if binary.exists():
        return binary
    source = home / "src"
    configured = (home / "build" / "CMakeCache.txt").exists()
    if not (source / "vendor" / "llama.cpp" / "CMakeLists.txt").exists():
        archive = sdist_path(version, sdist_dir)
        unpack = home / "unpack"
        with tarfile.open(archive) as tar:
            top = tar.getnames()[0].split("/")[0]
            tar.extractall(unpack, filter="data")
        (unpack / top).rename(source)
    llama_cpp = source / "vendor" / "llama.cpp"
    wheel_args = shlex.split(os.environ.get("CMAKE_ARGS", ""))
    if not configured:
        configure(llama_cpp, home / "build", wheel_args)
    subprocess.run(
        ["cmake", "--build", str(home / "build"), "--target", target, "-j", str(jobs)],
        check=True,
    )
    if not binary.exists():
        raise SystemExit(f"the build finished without {binary}")
    return binary


def configure(llama_cpp: Path, build: Path, wheel_args: list[str]) -> None:
    subprocess.run(
        [
            "cmake",
            "-S",
            str(llama_cpp),
            "-B",
            str(build),
            "-DCMAKE_BUILD_TYPE=Release",
            "-DBUILD_SHARED_LIBS=ON",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_BUILD_SERVER=OFF",
            *wheel_args,
        ],
        check=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=None, help="default: the installed llama-cpp-python")
    parser.add_argument("--sdist-dir", type=Path, default=CACHE_ROOT / "sdist")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--target", default=TARGET, help="llama-bench, llama-completion, ...")
    args = parser.parse_args()
    version = args.version or installed_version()
    print(build_llama_tool(version, args.sdist_dir, args.target, jobs=args.jobs))


if __name__ == "__main__":
    main()
