"""Downloads against a local HTTP server on 127.0.0.1 (never the internet): resume with a
Range request after an interrupted transfer, checksum verification, mirror override."""

from __future__ import annotations

import gzip
import hashlib
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from datadistill.data import create_dataset
from datadistill.data import download as download_module
from datadistill.data.download import MIRROR_ENV, Resource, download_file
from datadistill.errors import DatasetError

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes


class FileServer(BaseHTTPRequestHandler):
    """Serves `files`; honours `Range: bytes=N-`; can cut the first answer off halfway."""

    files: dict[str, bytes] = {}
    cut_next: bool = False
    ignore_range: bool = False
    range_headers: list[str | None] = []

    def do_GET(self):  # noqa: N802 - the http.server API
        body = self.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404)
            return
        asked = self.headers.get("Range")
        type(self).range_headers.append(asked)
        start = 0
        if asked and not self.ignore_range:
            start = int(asked.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if type(self).cut_next:
            # Promise the whole file, send half, drop the connection: an interrupted transfer.
            type(self).cut_next = False
            self.wfile.write(body[start : start + (len(body) - start) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture()
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)  # 127.0.0.1 must be reached directly
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    handler = type("Handler", (FileServer,), {"files": {}, "range_headers": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    handler.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield handler
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_interrupted_download_resumes_with_range(server, tmp_path):
    server.files["blob.bin"] = PAYLOAD
    server.cut_next = True
    res = Resource("blob.bin", "http://invalid.example/blob.bin", sha256=sha256(PAYLOAD))
    with pytest.raises(DatasetError, match="run the same command again to resume"):
        download_file(res, tmp_path, mirror=server.url)
    part = tmp_path / "blob.bin.part"
    assert part.stat().st_size == len(PAYLOAD) // 2 and not (tmp_path / "blob.bin").exists()

    path = download_file(res, tmp_path, mirror=server.url)
    assert server.range_headers == [None, f"bytes={len(PAYLOAD) // 2}-"]
    assert path == tmp_path / "blob.bin" and path.read_bytes() == PAYLOAD
    assert not part.exists()
    assert download_file(res, tmp_path, mirror=server.url) == path  # already there
    assert len(server.range_headers) == 2


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.files["blob.bin"] = PAYLOAD
    server.ignore_range = True
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD[:1000])
    res = Resource("blob.bin", "unused", md5=hashlib.md5(PAYLOAD).hexdigest())
    path = download_file(res, tmp_path, mirror=server.url)
    assert server.range_headers == ["bytes=1000-"] and path.read_bytes() == PAYLOAD


def test_complete_part_file_is_verified_after_416(server, tmp_path):
    server.files["blob.bin"] = PAYLOAD
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD)
    res = Resource("blob.bin", "unused", sha256=sha256(PAYLOAD))
    assert download_file(res, tmp_path, mirror=server.url).read_bytes() == PAYLOAD


def test_checksum_mismatch_keeps_nothing(server, tmp_path):
    server.files["blob.bin"] = PAYLOAD
    res = Resource("blob.bin", "unused", sha256="0" * 64)
    with pytest.raises(DatasetError, match="checksum mismatch.*expected sha256 0000"):
        download_file(res, tmp_path, mirror=server.url)
    assert list(tmp_path.iterdir()) == []


def test_http_error_names_url(server, tmp_path):
    res = Resource("missing.bin", "unused", sha256="0" * 64)
    with pytest.raises(DatasetError, match="HTTP 404.*DATADISTILL_MIRROR"):
        download_file(res, tmp_path, mirror=server.url)


def test_create_dataset_downloads_mnist_from_mirror_env(server, tmp_path, monkeypatch):
    """download=True fetches the four gzipped IDX files from $DATADISTILL_MIRROR."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([3, 1, 4], dtype=np.uint8),
    }
    fake = {}
    for stem, array in arrays.items():
        header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(
            f">{array.ndim}I", *array.shape
        )
        fake[stem + ".gz"] = gzip.compress(header + array.tobytes())
    server.files.update(fake)
    # The real checksums would not match these small files: point the table at them.
    resources = tuple(Resource(name, "unused", sha256=sha256(data)) for name, data in fake.items())
    monkeypatch.setitem(download_module.RESOURCES, "mnist", resources)
    monkeypatch.setenv(MIRROR_ENV, server.url)
    with pytest.raises(DatasetError, match="download=True"):
        create_dataset("mnist", tmp_path, "train")
    ds = create_dataset("mnist", tmp_path, "train", download=True)
    assert ds.labels.tolist() == [3, 1, 4]
    assert (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").is_file()


def test_published_checksums_are_well_formed():
    for dataset, resources in download_module.RESOURCES.items():
        for res in resources:
            assert (res.md5 and len(res.md5) == 32) or (res.sha256 and len(res.sha256) == 64)
            assert res.url.endswith(res.filename), dataset
