"""Downloading dataset files from their published URLs, with checksums and resume.

A file is fetched into `<file>.part`; an interrupted transfer leaves the `.part` behind and
the next call asks the server for the rest with an HTTP `Range` header. The checksum is
verified before the file is renamed to its final name, so a final name always holds a
verified file and a mismatch keeps nothing.

The base URL can be replaced (a local mirror, or a test server) with the `mirror` argument
or the `DATADISTILL_MIRROR` environment variable: the file is then `<mirror>/<filename>`.

Example:
    >>> from pathlib import Path
    >>> [r.filename for r in RESOURCES["svhn"]]
    ['train_32x32.mat', 'test_32x32.mat']
    >>> download_file(RESOURCES["svhn"][1], Path("data/svhn"))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from datadistill.errors import DatasetError
from datadistill.runtime.progress import progress_bar

logger = logging.getLogger(__name__)

MIRROR_ENV = "DATADISTILL_MIRROR"
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Resource:
    """One downloadable file and its published checksum (md5 or sha256)."""

    filename: str
    url: str
    md5: str | None = None
    sha256: str | None = None


_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_KRIZ = "https://www.cs.toronto.edu/~kriz/"
_SVHN = "http://ufldl.stanford.edu/housenumbers/"

# sha256 values for MNIST / Fashion-MNIST as in /work/shared/data/SHA256SUMS (verified
# against the files there); md5 values for the others are the ones the datasets publish.
RESOURCES: dict[str, tuple[Resource, ...]] = {
    "mnist": (
        Resource(
            "train-images-idx3-ubyte.gz",
            _MNIST + "train-images-idx3-ubyte.gz",
            sha256="db8f937d487057fb14a9f0fbe97f0bc8d311ab41b750d41e1ff37c43b9e55e19",
        ),
        Resource(
            "train-labels-idx1-ubyte.gz",
            _MNIST + "train-labels-idx1-ubyte.gz",
            sha256="ec02e7948609e5754d47881c09b8afdd8dfa60600b9e5388c8c54a67069ec772",
        ),
        Resource(
            "t10k-images-idx3-ubyte.gz",
            _MNIST + "t10k-images-idx3-ubyte.gz",
            sha256="167310007f03058885c7e95e6c0b19c20de5c7fd3031f4cbdadc9014a523d80b",
        ),
        Resource(
            "t10k-labels-idx1-ubyte.gz",
            _MNIST + "t10k-labels-idx1-ubyte.gz",
            sha256="fc607395669ec21321ea83e4b82c0544b7e8e63ff5b34337c06bc0a17cc0da3c",
        ),
    ),
    "fashion_mnist": (
        Resource(
            "train-images-idx3-ubyte.gz",
            _FASHION + "train-images-idx3-ubyte.gz",
            sha256="586471b0ca00aba1d6456bfeaf56ffbcaae7d1762d0cefcee1dccdabeb35142e",
        ),
        Resource(
            "train-labels-idx1-ubyte.gz",
            _FASHION + "train-labels-idx1-ubyte.gz",
            sha256="a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        ),
        Resource(
            "t10k-images-idx3-ubyte.gz",
            _FASHION + "t10k-images-idx3-ubyte.gz",
            sha256="dfcc4d9f3ce09d150bb362ddfe362162b4e383dad3d5ffe49d66d74a351b9237",
        ),
        Resource(
            "t10k-labels-idx1-ubyte.gz",
            _FASHION + "t10k-labels-idx1-ubyte.gz",
            sha256="67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        ),
    ),
    "cifar10": (
        Resource(
            "cifar-10-python.tar.gz",
            _KRIZ + "cifar-10-python.tar.gz",
            md5="c58f30108f718f92721af3b95e74349a",
        ),
    ),
    "cifar100": (
        Resource(
            "cifar-100-python.tar.gz",
            _KRIZ + "cifar-100-python.tar.gz",
            md5="eb9058c3a382ffc7106e4002c42a8d85",
        ),
    ),
    "svhn": (
        Resource(
            "train_32x32.mat", _SVHN + "train_32x32.mat", md5="e26dedcc434d2e4c54c9b2d4a06d8373"
        ),
        Resource(
            "test_32x32.mat", _SVHN + "test_32x32.mat", md5="eb5a983be6a315427106f1b69d36c6f7"
        ),
    ),
    "tiny_imagenet": (
        Resource(
            "tiny-imagenet-200.zip",
            "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
            md5="90528d7ca1a48142e341f4ef8d21d0de",
        ),
    ),
}


def resource(dataset: str, filename: str) -> Resource:
    """The `Resource` named `filename` among those of `dataset`."""
    for res in RESOURCES[dataset]:
        if res.filename == filename:
            return res
    raise KeyError(f"{dataset} has no downloadable file {filename!r}")


def resource_url(res: Resource, mirror: str | None = None) -> str:
    """The URL to fetch: `<mirror>/<filename>` when a mirror is set, else the official one."""
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    return f"{mirror.rstrip('/')}/{res.filename}" if mirror else res.url


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _expected_digest(res: Resource) -> tuple[str, str]:
    if res.sha256:
        return "sha256", res.sha256.lower()
    if res.md5:
        return "md5", res.md5.lower()
    raise DatasetError(f"{res.filename} has no published checksum; refusing to trust it")


def download_file(
    res: Resource,
    directory: str | Path,
    *,
    mirror: str | None = None,
    progress: bool = False,
    timeout: float = 60.0,
) -> Path:
    """Fetch `res` into `directory` (resuming a `.part`), verify it, and return its path.

    An existing final file is returned as is. Raises `DatasetError` when the transfer fails
    (the `.part` is kept for the next call to resume) or the checksum does not match (the
    `.part` is deleted).
    """
    directory = Path(directory)
    final = directory / res.filename
    if final.exists():
        return final
    directory.mkdir(parents=True, exist_ok=True)
    part = directory / (res.filename + ".part")
    url = resource_url(res, mirror)
    logger.info("downloading %s to %s", url, final)
    _fetch_to_part(url, part, progress=progress, timeout=timeout)
    _verify_part(part, res, url)
    os.replace(part, final)  # atomic: the final name only ever holds a verified file
    return final


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse | None:
    """Open `url`, asking for bytes from `offset` on; None means the part is already whole."""
    request = urllib.request.Request(url, headers={"User-Agent": "datadistill"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to send: the checksum will decide
            return None
        raise DatasetError(
            f"downloading {url} failed with HTTP {err.code} {err.reason}; check the URL or "
            f"set {MIRROR_ENV} to a mirror that has the file"
        ) from err
    except (urllib.error.URLError, OSError) as err:
        raise DatasetError(
            f"cannot reach {url} ({err}); check the network, or place the file in the data "
            f"folder yourself, or set {MIRROR_ENV} to a reachable mirror"
        ) from err


def _resumes_at(response: http.client.HTTPResponse, offset: int) -> bool:
    """True when the server honoured our Range request starting at `offset`."""
    if not offset or response.status != 206:
        return False
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return bool(match) and int(match.group(1)) == offset


def _fetch_to_part(url: str, part: Path, *, progress: bool, timeout: float) -> None:
    offset = part.stat().st_size if part.exists() else 0
    response = _open(url, offset, timeout)
    if response is None:
        return
    if offset and not _resumes_at(response, offset):
        if response.status == 206:  # a partial answer we did not ask for: start over
            response.close()
            response = _open(url, 0, timeout)
        offset = 0  # the server sends the whole file: write the part again from byte 0
    with response:
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        written = offset
        with (
            open(part, "ab" if offset else "wb") as fh,
            progress_bar(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=part.name,
                enabled=progress,
                stage=True,
            ) as bar,
        ):
            try:
                while chunk := response.read(CHUNK_BYTES):
                    fh.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
            except (http.client.HTTPException, OSError) as err:
                _interrupted(url, part, written, repr(err))
    # read(n) returns b"" when the connection drops early instead of raising, so compare
    # with the announced length ourselves.
    if total is not None and written < total:
        _interrupted(url, part, written, f"the server announced {total} bytes")


def _interrupted(url: str, part: Path, written: int, reason: str) -> NoReturn:
    raise DatasetError(
        f"download of {url} stopped after {written} bytes ({reason}); {part} is kept: run "
        "the same command again to resume"
    )


def _verify_part(part: Path, res: Resource, url: str) -> None:
    algorithm, expected = _expected_digest(res)
    actual = file_digest(part, algorithm)
    if actual != expected:
        part.unlink(missing_ok=True)  # never keep bytes we cannot trust
        raise DatasetError(
            f"checksum mismatch for {url}: expected {algorithm} {expected}, got {actual}; "
            "the download was deleted. Run again, or check the mirror if it keeps failing"
        )


def ensure_file(
    dataset: str,
    filename: str,
    candidates: list[Path],
    *,
    download: bool,
    download_dir: Path,
    progress: bool = False,
) -> Path:
    """Return the first existing `candidates/filename`, downloading it when allowed."""
    for folder in candidates:
        if (folder / filename).is_file():
            return folder / filename
    if download:
        return download_file(resource(dataset, filename), download_dir, progress=progress)
    looked = ", ".join(str(folder) for folder in candidates)
    raise DatasetError(
        f"{dataset}: {filename} not found (looked in {looked}); pass download=True "
        "(CLI: --download, or the override download=true) or put the file in one of those "
        "folders"
    )
