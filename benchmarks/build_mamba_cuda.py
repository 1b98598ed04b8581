"""Build mamba_ssm's and causal-conv1d's CUDA extensions for one GPU architecture, so that the peers
of Mamba-1 (`selective_scan_cuda`: mamba_ssm's `selective_scan_fn` and `mamba_inner_fn`) and of
Mamba-2's fused paths (`causal_conv1d_cuda`) run their official kernels.

    python benchmarks/build_mamba_cuda.py --mamba-src MAMBA --conv1d-src CONV1D --out DIR [--arch 90] [--jobs 16]

MAMBA is a checkout of state-spaces/mamba at the tag of the installed mamba_ssm (its
`csrc/selective_scan`), CONV1D one of Dao-AILab/causal-conv1d (`csrc/` and its `causal_conv1d/`
package). Both are compiled with the flags of their own setup.py but for the one target
`-gencode arch=compute_ARCH,code=sm_ARCH` (sm_90 for H100/H200), which takes minutes on a 16-core
machine instead of the hour that every target takes. DIR receives `selective_scan_cuda*.so`,
`causal_conv1d_cuda*.so` and the `causal_conv1d` package (only beside its extension); put DIR first on PYTHONPATH:

    export PYTHONPATH=DIR:$PYTHONPATH
    python -c "import selective_scan_cuda, causal_conv1d_cuda"

The built modules link against the torch they were built with: build them on the machine (image)
that runs them. Prints each build's wall time; an extension that fails to build is reported and the
other is still built (exit code 1 if any failed).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import time

NVCC_FLAGS = [
    "-O3", "-std=c++17", "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math", "-lineinfo",
    "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__", "-U__CUDA_NO_BFLOAT16_OPERATORS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
]


def extensions(mamba_src: str, conv1d_src: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (include dir, sources) of each extension, as the projects' setup.py lists them."""
    scan = os.path.join(mamba_src, "csrc", "selective_scan")
    conv = os.path.join(conv1d_src, "csrc")
    scan_sources = ["selective_scan.cpp"] + [f"selective_scan_fwd_{t}.cu" for t in ("fp32", "fp16", "bf16")] + [
        f"selective_scan_bwd_{t}_{k}.cu" for t in ("fp32", "fp16", "bf16") for k in ("real", "complex")
    ]
    conv_sources = ["causal_conv1d.cpp", "causal_conv1d_fwd.cu", "causal_conv1d_bwd.cu", "causal_conv1d_update.cu"]
    return {
        "selective_scan_cuda": (scan, [os.path.join(scan, s) for s in scan_sources]),
        "causal_conv1d_cuda": (conv, [os.path.join(conv, s) for s in conv_sources]),
    }


def build(name: str, include: str, sources: list[str], arch: str, out: str, build_root: str) -> None:
    from torch.utils.cpp_extension import load

    missing = [s for s in sources if not os.path.exists(s)]
    if missing:
        raise FileNotFoundError(f"{name}: missing sources {missing}")
    build_dir = os.path.join(build_root, name)
    os.makedirs(build_dir, exist_ok=True)
    load(
        name=name, sources=sources, build_directory=build_dir, verbose=False, with_cuda=True,
        extra_include_paths=[os.path.abspath(include)], extra_cflags=["-O3", "-std=c++17"],
        extra_cuda_cflags=NVCC_FLAGS + [f"-gencode=arch=compute_{arch},code=sm_{arch}", "--threads", "4"],
    )
    for so in glob.glob(os.path.join(build_dir, f"{name}*.so")):
        shutil.copy2(so, out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mamba-src", required=True)
    ap.add_argument("--conv1d-src", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--arch", default="90", help="compute capability without the dot (90: H100, H200)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count(), help="parallel compiler jobs (MAX_JOBS)")
    ap.add_argument("--only", default=None, help="build only these extensions, comma-separated")
    a = ap.parse_args()
    os.environ["MAX_JOBS"] = str(a.jobs)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{a.arch[:-1]}.{a.arch[-1]}")
    os.makedirs(a.out, exist_ok=True)
    build_root = os.path.join(a.out, "build")
    failed, built = 0, []
    for name, (include, sources) in extensions(a.mamba_src, a.conv1d_src).items():
        if a.only and name not in a.only.split(","):
            continue
        t0 = time.time()
        try:
            build(name, include, sources, a.arch, a.out, build_root)
            built.append(name)
            print(f"{name}: built in {time.time() - t0:.0f} s", flush=True)
        except Exception as e:  # noqa: BLE001 - report and build the other one
            failed = 1
            print(f"{name}: FAILED after {time.time() - t0:.0f} s: {str(e).strip().splitlines()[-1][:300]}", flush=True)
    package = os.path.join(a.conv1d_src, "causal_conv1d")
    if "causal_conv1d_cuda" in built and os.path.isdir(package):  # the package imports the extension
        shutil.copytree(package, os.path.join(a.out, "causal_conv1d"), dirs_exist_ok=True)
    shutil.rmtree(build_root, ignore_errors=True)
    return failed


if __name__ == "__main__":
    sys.exit(main())
