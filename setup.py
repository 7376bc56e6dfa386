"""Build of the reference implementation's C++/CUDA extension, and the package list.

Everything else about the distribution lives in pyproject.toml. The CPU kernels are always built;
the CUDA kernels are built when CUDA_HOME is set to a toolkit with nvcc and torch is a CUDA build,
or when FORCE_CUDA=1.
Set MRCNN_BENCH_NO_EXT=1 to skip the extension entirely (the ops then fall back to pure PyTorch).
"""

import glob
import os
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
PACKAGE_DIRS = {
    "mrcnn_bench.harness": "harness",
    "mrcnn_bench.adapters": "adapters",
    "mrcnn_bench.external": "external",
    "mrcnn_bench.reference_impl": "reference_impl",
    "mrcnn_bench.configs": "configs",
}


def find_packages():
    packages = []
    for name, folder in PACKAGE_DIRS.items():
        for dirpath, _dirs, files in os.walk(os.path.join(ROOT, folder)):
            if "__init__.py" in files or dirpath == os.path.join(ROOT, folder):
                rel = os.path.relpath(dirpath, os.path.join(ROOT, folder))
                packages.append(name if rel == "." else name + "." + rel.replace(os.sep, "."))
    return sorted(packages)


def cuda_wanted():
    import torch

    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    if torch.version.cuda is None:
        return False
    # Only an explicit CUDA_HOME counts (torch would otherwise guess /usr/local/cuda).
    cuda_home = os.environ.get("CUDA_HOME")
    return bool(cuda_home) and shutil.which(os.path.join(cuda_home, "bin", "nvcc")) is not None


def extensions():
    csrc = os.path.join("reference_impl", "csrc")
    if os.environ.get("MRCNN_BENCH_NO_EXT") == "1" or not os.path.isdir(csrc):
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob(os.path.join(csrc, "*.cpp")) + glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    cxx = ["-O3", "-std=c++20", "-fopenmp"]
    define = [("TORCH_EXTENSION_NAME", "_C")]
    kwargs = dict(include_dirs=[os.path.join(ROOT, csrc)], define_macros=define, extra_link_args=["-fopenmp"])
    if cuda_wanted():
        sources += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
        # torch's CUDA 13 wheels carry some CUDA headers (cusparse.h, ...) in nvidia/cu13/include.
        import nvidia  # noqa: F401  (present with the CUDA build of torch)

        extra_inc = [os.path.join(p, "cu13", "include") for p in nvidia.__path__]
        kwargs["include_dirs"] += [d for d in extra_inc if os.path.isdir(d)]
        define.append(("WITH_CUDA", None))
        # Machine code for A100 (8.0) and H100/H200 (9.0), and 9.0's PTX, which the driver compiles
        # for any newer GPU (Blackwell and later) at first load.
        arch = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        print(f"mrcnn-bench: building CPU+CUDA kernels for arch {arch}")
        ext = CUDAExtension(
            "mrcnn_bench.reference_impl._C",
            sources,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr"]},
            **kwargs,
        )
    else:
        print("mrcnn-bench: building CPU kernels only (no nvcc/CUDA torch; FORCE_CUDA=1 to insist)")
        ext = CppExtension(
            "mrcnn_bench.reference_impl._C", sources, extra_compile_args={"cxx": cxx}, **kwargs
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(packages=find_packages(), ext_modules=ext_modules, cmdclass=cmdclass)
