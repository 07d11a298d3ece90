"""The PEP 517 backend of pyproject.toml: setuptools' (setup.py drives the CMake
build), asking for the PyPI `cmake` package only where no cmake >= 3.25 is on PATH,
so that an offline build with the system's cmake needs nothing more."""
import re
import shutil
import subprocess

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (build_wheel, build_sdist, ...)

CMAKE_MIN = (3, 25)


def _cmake_requirement():
    exe = shutil.which("cmake")
    if exe:
        try:
            out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            out = ""
        m = re.search(r"(\d+)\.(\d+)", out)
        if m and (int(m[1]), int(m[2])) >= CMAKE_MIN:
            return []
    return ["cmake>=%d.%d" % CMAKE_MIN]


def get_requires_for_build_wheel(config_settings=None):
    return _setuptools.get_requires_for_build_wheel(config_settings) + _cmake_requirement()


def get_requires_for_build_editable(config_settings=None):
    return _setuptools.get_requires_for_build_editable(config_settings) + _cmake_requirement()
