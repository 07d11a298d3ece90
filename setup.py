"""The dsv4 Python package, built by the project's CMake (pybind11's cmake_example
pattern; metadata in pyproject.toml). `pip install .` and `python -m build --wheel`
configure a CMake build of the library and the extension only (no tests, benchmarks
or command-line tool) under build-python/, then place dsv4/_core*.so next to the
Python modules. The version is the project() version of CMakeLists.txt.

Environment: DSV4_CMAKE_ARGS (extra CMake arguments, e.g. -DDSV4_NATIVE_ISA=OFF for
CPUs without AVX2+FMA), CMAKE_BUILD_PARALLEL_LEVEL (compile jobs; default: all cores).
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def cmake_project_version():
    text = (ROOT / "CMakeLists.txt").read_text()
    m = re.search(r"project\(\s*dsv4\s+VERSION\s+([0-9][0-9.]*)", text)
    if not m:
        raise RuntimeError("CMakeLists.txt: no 'project(dsv4 VERSION x.y.z' line")
    return m.group(1)


class CMakeBuild(build_ext):
    """Builds the target dsv4_python (dsv4._core) with CMake instead of compiling sources."""

    def build_extension(self, ext):
        import pybind11  # a build requirement (pyproject.toml)

        build = Path(self.build_temp).resolve() / "cmake"
        args = [
            f"-DCMAKE_BUILD_TYPE={'Debug' if self.debug else 'Release'}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DDSV4_PYTHON=ON", "-DDSV4_BUILD_TOOLS=OFF", "-DDSV4_BUILD_TESTS=OFF", "-DDSV4_BUILD_BENCH=OFF",
            "-DDSV4_INSTALL=OFF",
        ] + shlex.split(os.environ.get("DSV4_CMAKE_ARGS", ""))
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), *args], check=True)
        subprocess.run(["cmake", "--build", str(build), "--target", "dsv4_python", "-j", jobs], check=True)
        built = build / "python" / "dsv4" / ("_core" + sysconfig.get_config_var("EXT_SUFFIX"))
        if not built.is_file():
            raise RuntimeError(f"the CMake build made no {built}")
        dest = Path(self.get_ext_fullpath(ext.name))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built, dest)


def license_metadata():
    """Apache-2.0 as License-Expression (setuptools >= 77, PEP 639) or as the older License field."""
    import setuptools
    major = int(re.match(r"\d+", setuptools.__version__).group())
    return {"license_expression": "Apache-2.0"} if major >= 77 else {"license": "Apache-2.0"}


setup(
    version=cmake_project_version(),
    **license_metadata(),
    ext_modules=[Extension("dsv4._core", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    options={"build": {"build_base": "build-python"}},
    zip_safe=False,
)
