"""The README's CPU install, resolved but not installed: fail if it would pull a CUDA build.

    python3 .ci/check_cpu_install.py -r requirements/cpu.txt -e '.[dev]'   # the pip install args to check

`pip install --dry-run --ignore-installed --report` resolves what a fresh venv would get, without
installing anything; a CUDA runtime package (nvidia-*, cuda-*), triton, or a torch built for CUDA
or ROCm (+cu128, +rocm6.4) in that report means the CPU path no longer avoids the GPU build.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

#: NVIDIA's NVML bindings: pure Python, no CUDA; dvclive requires them to read GPU stats where there is a GPU.
NOT_CUDA = {"nvidia-ml-py"}


def cuda_packages(report: dict) -> list[str]:
    """'name version' of each package in a pip installation report that belongs to a GPU build."""
    found = []
    for item in report["install"]:
        name = re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower()
        version = item["metadata"]["version"]
        local = version.partition("+")[2]
        gpu = (name.startswith(("nvidia-", "cuda-")) and name not in NOT_CUDA) or "triton" in name
        if gpu or (name == "torch" and local.startswith(("cu", "rocm"))):
            found.append(f"{name} {version}")
    return found


def main(pip_args: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                   "--report", str(path), *pip_args]
        subprocess.run(command, check=True)
        report = json.loads(path.read_text())
    found = cuda_packages(report)
    torch = [i["metadata"]["version"] for i in report["install"] if i["metadata"]["name"].lower() == "torch"]
    if found:
        print(f"error: pip install {' '.join(pip_args)} would install a GPU build: {', '.join(found)}",
              file=sys.stderr)
        return 1
    print(f"pip install {' '.join(pip_args)}: {len(report['install'])} packages, torch {torch[0] if torch else '-'},"
          " no CUDA package")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
