"""Small C kernels, compiled once per machine with the system C compiler and loaded by ``ctypes``.

A kernel's source ships with the package. :func:`load` compiles it on first use (a second or
two) into a shared library under the user's cache folder and returns it; later processes load
the cached file. Where no C compiler is found, the compile fails, or
``DATADISTILL_C_KERNELS=0`` is set, :func:`load` returns None and the caller keeps its
PyTorch form of the same computation, so the package never needs a compiler to run.

The library is built with ``-O3 -march=native`` (no fast-math: IEEE arithmetic, the compiler
may only contract a*b+c into one rounding) and ``-fno-trapping-math``, which changes no value:
it lets the compiler compute both sides of a select, as in the norm passes' ReLU mask, where
GCC otherwise keeps a branch per element unless the CPU has AVX-512's masked arithmetic (the
kernels never read the floating-point exception flags). The cache key holds the source, the
compiler's version, the flags and this CPU's model and flags; a cache folder shared between
machines keeps one library per CPU. Files are written to a temporary name and renamed, so
processes that compile at the same moment (torchrun's ranks) never load a half-written
library.

``REAL`` and ``SUFFIX`` in a source are replaced to make one copy of every function per
floating-point type (``float``/``_f32``, ``double``/``_f64``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

ENV = "DATADISTILL_C_KERNELS"
_LOADED: set[str] = set()  # the sources whose library this process has loaded
FLAGS = ("-O3", "-march=native", "-fno-trapping-math", "-fPIC", "-shared", "-std=c99")
TYPES = (("float", "f32"), ("double", "f64"))


def cache_dir() -> Path:
    """``$DATADISTILL_CACHE`` or ``$XDG_CACHE_HOME/datadistill`` (``~/.cache/datadistill``)."""
    if os.environ.get("DATADISTILL_CACHE"):
        return Path(os.environ["DATADISTILL_CACHE"]) / "kernels"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "datadistill" / "kernels"


def _cpu_id() -> str:
    """This CPU's model and feature flags (Linux), else the platform's processor string."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() + platform.machine()
    keep = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(keep)))


def _compiler() -> list[str] | None:
    """``$CC`` (split as a shell would: ``ccache gcc`` works), else ``cc`` or ``gcc``."""
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    found = shutil.which("cc") or shutil.which("gcc")
    return None if found is None else [found]


def expand(source: str) -> str:
    """The source once per type: REAL and SUFFIX replaced (see the module docstring)."""
    head, sep, body = source.partition("\n/* -- per type -- */\n")
    if not sep:
        head, body = "", source
    parts = [head]
    for real, suffix in TYPES:
        parts.append(f"#define REAL {real}\n"
                     + body.replace("SUFFIX", suffix) + "\n#undef REAL\n")
    return "\n".join(parts)


def _build(src: str, cc: list[str], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_so = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=out.parent)
    os.close(fd)
    tmp_c = Path(tmp_so).with_suffix(".c")
    try:
        tmp_c.write_text(src)
        subprocess.run([*cc, *FLAGS, str(tmp_c), "-o", tmp_so], check=True,
                       capture_output=True, timeout=120)
        os.replace(tmp_so, out)
    finally:
        tmp_c.unlink(missing_ok=True)
        Path(tmp_so).unlink(missing_ok=True)


def library_path(source_path: str, cc: list[str]) -> tuple[str, Path]:
    """(the expanded source, the cached library's path) of ``source_path`` for compiler
    ``cc`` on this CPU. Raises OSError or SubprocessError where ``cc`` cannot be run."""
    src = expand(Path(source_path).read_text())
    version = subprocess.run([*cc, "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    key = hashlib.sha256("\0".join([src, version, " ".join(FLAGS), _cpu_id()]).encode())
    return src, cache_dir() / f"{Path(source_path).stem}-{key.hexdigest()[:16]}.so"


@functools.cache
def load(source_path: str) -> ctypes.CDLL | None:
    """The compiled library of the C file ``source_path`` (see :func:`expand`), or None where
    it cannot be had (module docstring). Cached per process and, as a file, per machine."""
    if os.environ.get(ENV, "1") == "0":
        return None
    cc = _compiler()
    if cc is None:
        return None
    try:
        src, out = library_path(source_path, cc)
        if not out.exists():
            _build(src, cc, out)
        try:
            lib = ctypes.CDLL(str(out))
        except OSError:  # a damaged cache file (written by other means): build it again, once
            out.unlink(missing_ok=True)
            _build(src, cc, out)
            lib = ctypes.CDLL(str(out))
    except (OSError, subprocess.SubprocessError):
        return None
    _LOADED.add(Path(source_path).stem)
    return lib


@functools.cache
def function(source_path: str, name: str, double: bool, argtypes: tuple):
    """The C function ``name`` (its ``_f64`` copy if ``double``, else ``_f32``) of the library
    of ``source_path``, with ``argtypes`` set and no return value, or None where
    :func:`load` has no library."""
    lib = load(source_path)
    if lib is None:
        return None
    fn = getattr(lib, f"{name}_{'f64' if double else 'f32'}")
    fn.argtypes = list(argtypes)
    fn.restype = None
    return fn


def loaded() -> list[str]:
    """The kernels (source names) this process has loaded so far: what a run record states."""
    return sorted(_LOADED)
