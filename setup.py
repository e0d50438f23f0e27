"""Build script for carcore, the compiled core of carmulti.

``pip install .`` (or ``pip install -e .``) compiles three Cython extension
modules: ``carcore.state``, ``carcore.eventlog`` and ``carcore.budget``.

Environment switches:

* ``CARCORE_DEBUG_BUILD=1`` -- ``-O0 -g3`` and Cython line tracing off; for gdb.
* ``CARCORE_ANNOTATE=1`` -- write Cython's HTML annotation next to each ``.pyx``.

There is no pure-Python fallback: carcore *is* the compiled thing (like uvloop).
A machine without a C compiler gets a message naming what to install.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MODULES = ("state", "eventlog", "budget")
DEBUG = os.environ.get("CARCORE_DEBUG_BUILD") == "1"

_COMPILER_HELP = """
carcore (the compiled core of carmulti) could not be built: {reason}

carcore is a C extension and needs a C compiler and the Python headers.
  Debian/Ubuntu:  apt-get install gcc python3-dev
  Fedora/RHEL:    dnf install gcc python3-devel
  Alpine:         apk add build-base python3-dev
  macOS:          xcode-select --install
Then run the install again.
"""


def _check_compiler() -> None:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None and shutil.which("cc") is None and shutil.which("gcc") is None:
        sys.exit(_COMPILER_HELP.format(reason=f"no C compiler found (looked for {cc!r}, 'cc', 'gcc')"))
    include = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        sys.exit(_COMPILER_HELP.format(reason=f"Python.h not found in {include}"))


class carcore_build_ext(build_ext):
    """``build_ext`` that turns compiler failures into an actionable message."""

    def run(self) -> None:
        _check_compiler()
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - re-raised as a clear message
            sys.exit(_COMPILER_HELP.format(reason=f"{type(exc).__name__}: {exc}"))


def _extensions():
    try:
        from Cython.Build import cythonize
    except ImportError:  # pragma: no cover - build isolation installs Cython
        sys.exit(
            "carcore needs Cython>=3.0.10 to build from source: pip install 'Cython>=3.0.10,<4' "
            "(pip does this for you unless --no-build-isolation is given)."
        )
    cflags = ["-O0", "-g3"] if DEBUG else ["-O3"]
    cflags += ["-std=gnu11", "-Wno-unused-function"]
    exts = [
        Extension(
            f"carcore.{name}",
            [f"carcore/{name}.pyx"],
            include_dirs=["carcore/includes"],
            extra_compile_args=cflags,
            libraries=["rt"] if sys.platform.startswith("linux") else [],
        )
        for name in MODULES
    ]
    return cythonize(
        exts,
        compiler_directives={
            "language_level": "3",
            "embedsignature": True,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        },
        annotate=os.environ.get("CARCORE_ANNOTATE") == "1",
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": carcore_build_ext})
