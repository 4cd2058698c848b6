"""The developer side of ``benchmarks/share.py``: a venv with torch and friends, built once.

The venv lives under the bench directory (default ``/var/lib/hwsched-bench``), never under
``/tmp``: the share shows the node the developer's root, but a run's ``/tmp`` is its own, and
``hwrun`` refuses a working directory there. ``torch==2.13.0`` is pinned because that CPU
build lies on this kind of machine's disk and pip takes it from there without a download; the
rest comes from PyPI. A marker file says the build finished, so an interrupted build is redone.

Run alone to build it: ``python benchmarks/share_env.py [--bench-dir DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_BENCH_DIR = Path("/var/lib/hwsched-bench")
PACKAGES = ["torch==2.13.0", "numpy", "pandas", "matplotlib", "scikit-learn"]
MARKER = ".hwsched-bench-complete"


def check_bench_dir(bench_dir: Path) -> Path:
    bench_dir = bench_dir.resolve()
    if bench_dir == Path("/tmp") or Path("/tmp") in bench_dir.parents:
        raise SystemExit(
            f"{bench_dir}: the bench directory may not lie under /tmp (a run's /tmp is its own "
            "and hwrun refuses to run from there); pick another --bench-dir"
        )
    return bench_dir


def venv_python(bench_dir: Path) -> Path:
    return bench_dir / "venv" / "bin" / "python"


def ensure_venv(bench_dir: Path, quiet: bool = False) -> Path:
    """The venv's interpreter; builds the venv first unless a finished build is there."""
    bench_dir = check_bench_dir(bench_dir)
    venv = bench_dir / "venv"
    marker = venv / MARKER
    python = venv_python(bench_dir)
    if marker.exists():
        return python
    bench_dir.mkdir(parents=True, exist_ok=True)
    # readable by every user: the work may run as any developer uid
    os.chmod(bench_dir, 0o755)
    start = time.monotonic()
    print(f"building the developer venv in {venv} (once) ...", file=sys.stderr, flush=True)
    # sys.executable may be a venv's: the new venv is made from the base interpreter either way
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    if quiet:
        pip.append("--quiet")
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *PACKAGES], check=True)
    check = subprocess.run(
        [
            str(python),
            "-c",
            "import torch, numpy, pandas, matplotlib, sklearn; print(torch.__version__)",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    info = {
        "packages": PACKAGES,
        "torch": check.stdout.strip(),
        "built_in_s": round(time.monotonic() - start, 1),
    }
    marker.write_text(json.dumps(info) + "\n")
    print(f"venv ready: {info}", file=sys.stderr, flush=True)
    return python


def venv_size(bench_dir: Path) -> tuple[int, int]:
    """(files, bytes) in the venv: how much an import may have to look at."""
    files = size = 0
    for root, _dirs, names in os.walk(bench_dir / "venv"):
        for name in names:
            try:
                size += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
            files += 1
    return files, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench-dir", type=Path, default=DEFAULT_BENCH_DIR)
    args = parser.parse_args()
    print(ensure_venv(args.bench_dir))
    files, size = venv_size(args.bench_dir)
    print(f"{files} files, {size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
