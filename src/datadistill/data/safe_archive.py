"""Reading and extracting tar and zip archives without trusting their member names.

A downloaded archive is untrusted input: a member named `../x` or `/etc/x`, a symlink or a
device node could write outside the target folder. Every member is checked before anything
is read or written, and one bad member refuses the whole archive. Sizes are bounded too: an
archive whose members add up to more than `MAX_EXPANDED_BYTES` (a decompression bomb, or not
the official file) is refused before anything is expanded, and a full disk while extracting
is said in words.

Example:
    >>> from pathlib import Path
    >>> members = read_tar_members(Path("cifar-10-python.tar.gz"),
    ...                            {"cifar-10-batches-py/test_batch"})  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from datadistill.errors import DatasetError
from datadistill.io import is_disk_full

logger = logging.getLogger(__name__)

# The largest official archive (Tiny ImageNet) expands to well under 1 GB; what is read into
# memory (CIFAR batches, MNIST files) to under 200 MB.
MAX_EXPANDED_BYTES = 16 * 2**30
MAX_IN_MEMORY_BYTES = 2**31


def check_expanded_size(total: int, source: Path | str, limit: int | None = None) -> None:
    """Refuse an archive or stream that would expand to more than ``limit`` bytes
    (default `MAX_EXPANDED_BYTES`)."""
    limit = MAX_EXPANDED_BYTES if limit is None else limit
    if total > limit:
        raise DatasetError(
            f"{source} would expand to more than {limit / 2**20:,.0f} MiB (the limit): it is a "
            "decompression bomb or not the official file. Delete it and download it again "
            "from the official source"
        )


def _extract_error(archive: Path, err: BaseException, destination: Path) -> DatasetError:
    """A failed extraction in words: a full disk, or a damaged archive."""

    if is_disk_full(err, destination):
        return DatasetError(f"no space left on the device holding {destination} while "
                            f"extracting {archive}; free some space and run the command again")
    return DatasetError(f"extracting {archive} failed ({err}); delete it and download it again")


def check_member_name(name: str, archive: Path) -> None:
    """Refuse absolute names, drive letters and `..` components.

    Example:
        >>> check_member_name("a/b.png", Path("x.zip"))
        >>> check_member_name("../b.png", Path("x.zip"))
        Traceback (most recent call last):
        ...
        datadistill.errors.DatasetError: ...
    """
    posix = name.replace("\\", "/")
    parts = PurePosixPath(posix).parts
    unsafe = (
        posix.startswith("/")
        or (len(posix) > 1 and posix[1] == ":")  # a Windows drive letter such as C:
        or ".." in parts
        or "\x00" in posix
    )
    if unsafe:
        raise DatasetError(
            f"archive {archive} has an unsafe member {name!r} (absolute path or '..'); "
            "it was not extracted. Delete the archive and download it again from the "
            "official source"
        )


def _check_tar_member(member: tarfile.TarInfo, archive: Path) -> None:
    check_member_name(member.name, archive)
    if not (member.isfile() or member.isdir()):
        # Links can point anywhere; devices and fifos have no place in a dataset archive.
        raise DatasetError(
            f"archive {archive} has member {member.name!r} that is a link, device or fifo; "
            "it was refused. Delete the archive and download it again from the official source"
        )


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as err:
        reason = " ".join(str(err).split())  # tarfile lists one line per method it tried
        raise DatasetError(
            f"cannot open archive {archive}: {reason}; the file is truncated or corrupt: "
            "delete it and download it again"
        ) from err


def _tar_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """All members, each checked; reading the index also detects a truncated stream."""
    try:
        members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DatasetError(
            f"archive {archive} is truncated or corrupt ({err}): delete it and download it again"
        ) from err
    for member in members:
        _check_tar_member(member, archive)
    return members


def read_tar_members(archive: Path, wanted: set[str]) -> dict[str, bytes]:
    """Read the regular-file members named in `wanted` into memory.

    All members are checked first, so an archive with one unsafe member is refused whole.
    Names missing from the archive are simply absent from the result.
    """
    with _open_tar(archive) as tar:
        members = _tar_members(tar, archive)
        wanted_bytes = sum(m.size for m in members if m.name in wanted)
        check_expanded_size(wanted_bytes, archive, min(MAX_IN_MEMORY_BYTES, MAX_EXPANDED_BYTES))
        found: dict[str, bytes] = {}
        for member in members:
            if member.isfile() and member.name in wanted:
                try:
                    handle = tar.extractfile(member)
                    found[member.name] = handle.read() if handle else b""
                except (tarfile.TarError, OSError, EOFError) as err:
                    raise DatasetError(
                        f"member {member.name!r} of {archive} cannot be read ({err}); the "
                        "archive is truncated or corrupt: delete it and download it again"
                    ) from err
        return found


def extract_tar(archive: Path, destination: Path) -> None:
    """Extract a tar archive into `destination` after checking every member."""
    with _open_tar(archive) as tar:
        members = _tar_members(tar, archive)
        check_expanded_size(sum(m.size for m in members), archive)
        destination.mkdir(parents=True, exist_ok=True)
        try:
            # filter="data" is a second guard where Python has it (3.11.4+, 3.12).
            if hasattr(tarfile, "data_filter"):
                tar.extractall(destination, members=members, filter="data")
            else:  # pragma: no cover - older Pythons; the names were checked above
                tar.extractall(destination, members=members)
        except (tarfile.TarError, OSError, EOFError) as err:
            raise _extract_error(archive, err, destination) from err


def _check_zip_member(info: zipfile.ZipInfo, archive: Path) -> None:
    check_member_name(info.filename, archive)
    # The high 16 bits hold a Unix st_mode when the zip was made on Unix (create_system 3);
    # a file-type field of 0 means "not recorded", which zipfile.writestr produces.
    file_type = stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0
    if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise DatasetError(
            f"archive {archive} has member {info.filename!r} that is a link or special file; "
            "it was refused. Delete the archive and download it again from the official source"
        )


def extract_zip(archive: Path, destination: Path) -> None:
    """Extract a zip archive into `destination` after checking every member.

    Members go first to a hidden staging folder inside `destination`; each top-level entry
    is then renamed into place, so an interrupted run never leaves a half-extracted tree
    that looks complete.
    """
    staging = destination / f".extracting-{archive.name}"
    shutil.rmtree(staging, ignore_errors=True)  # left over by an interrupted run
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_zip_member(info, archive)
            check_expanded_size(sum(i.file_size for i in infos), archive)  # reads stop there
            staging.mkdir(parents=True)
            for info in infos:
                zf.extract(info, staging)
        for entry in sorted(staging.iterdir()):
            target = destination / entry.name
            if target.exists():
                raise DatasetError(
                    f"cannot extract {archive}: {target} already exists; delete it to "
                    "extract the archive again"
                )
            os.replace(entry, target)
    except OSError as err:
        raise _extract_error(archive, err, destination) from err
    except (zipfile.BadZipFile, EOFError) as err:
        raise DatasetError(
            f"cannot extract {archive}: {err}; the file is truncated or corrupt: "
            "delete it and download it again"
        ) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("extracted %s into %s", archive, destination)
