"""Packaging. The native CPU kernels (kernels/) ship as package data. Whenever the build can import
torch they are compiled at install time into ``xcodec_fast._C``:

    pip install --no-build-isolation .        # torch already installed: builds the extension

A plain ``pip install .`` builds in isolation without torch (the build requirements stay torch-free
on purpose: a build-time torch would fetch a multi-GB CUDA wheel), installs pure Python, and the
kernels compile on first use instead (see xcodec_fast/ops/native.py). XCODEC_FAST_BUILD_NATIVE=0
skips the install-time build.
"""

import importlib.util
import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
KERNELS = ROOT / "kernels"
KERNEL_PATTERNS = ("*.cpp", "*.h", "*.py")


def kernel_files() -> list[Path]:
    return sorted(p for pattern in KERNEL_PATTERNS for p in KERNELS.glob(pattern)) if KERNELS.is_dir() else []


class build_py_with_kernels(build_py):
    """Copies kernels/ into the package (xcodec_fast/kernels) so that a wheel can build them."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "xcodec_fast" / "kernels"
        target.mkdir(parents=True, exist_ok=True)
        for source in kernel_files():
            shutil.copy2(source, target / source.name)


class sdist_with_kernels(sdist):
    def add_defaults(self):
        super().add_defaults()
        self.filelist.extend(str(p.relative_to(ROOT)) for p in kernel_files())


def native_extension():
    """The prebuilt extension when torch is importable (and not switched off); else nothing."""
    if os.environ.get("XCODEC_FAST_BUILD_NATIVE") == "0":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("torch is not importable at build time: the native kernels will compile on first use "
              "(pip install --no-build-isolation . with torch installed prebuilds them)")
        return [], {}
    spec = importlib.util.spec_from_file_location("xcodec_fast_kernels_build_config", KERNELS / "build_config.py")
    config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config)
    capability = config.target_capability()
    extension = CppExtension(
        "xcodec_fast._C",
        # setuptools wants sources relative to setup.py
        sources=[os.path.relpath(p, ROOT) for p in config.source_paths()],
        extra_compile_args=config.build_flags(capability),
    )
    return [extension], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, ext_commands = native_extension()

setup(
    ext_modules=ext_modules,
    cmdclass={"build_py": build_py_with_kernels, "sdist": sdist_with_kernels, **ext_commands},
)
