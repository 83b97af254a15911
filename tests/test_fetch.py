"""fetch: real HTTP from a loopback server with md5 checks, local paths, cache reuse, fast offline
failure, the generated synthetic archive, and one-line refusals (stages/fetch.py, datasets.download)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import time
from pathlib import Path

import pytest
import yaml

from cifar_dvc.datasets import download, sources
from cifar_dvc.datasets.params import DataParams
from cifar_dvc.errors import FetchError, ParamsError, stage_main
from stages import fetch as fetch_stage

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB standing in for an archive (fetch checks md5 only)
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()
ARCHIVE = "cifar-10-python.tar.gz"


class Server:
    """A real HTTP server on 127.0.0.1 serving a directory, counting the requests it answers."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:
                outer.requests.append(self.path)

        handler = functools.partial(Handler, directory=root)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    (root / ARCHIVE).write_bytes(PAYLOAD)
    srv = Server(root)
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch) -> Path:
    """An empty home directory, so no real ~/.keras/datasets is used or touched."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def run_fetch(tmp_path: Path, data: dict, capsys, seed=1) -> tuple[int, list[str], Path]:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": seed, "data": data}))
    out = tmp_path / "raw"
    code = 0
    try:
        stage_main(fetch_stage.main, ["--out", str(out), "--params", str(params)])
    except SystemExit as exc:
        code = exc.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    return code, err, out


def test_download_over_http_with_md5(tmp_path, server, capsys):
    code, err, out = run_fetch(tmp_path, {"dataset": "cifar10", "url": server.url(ARCHIVE),
                                          "md5": PAYLOAD_MD5}, capsys)
    assert (code, err) == (0, [])
    assert (out / ARCHIVE).read_bytes() == PAYLOAD
    assert server.requests == [f"/{ARCHIVE}"]
    assert [p.name for p in out.iterdir()] == [ARCHIVE]


def test_wrong_md5_is_refused_and_leaves_nothing(tmp_path, server, capsys):
    code, err, out = run_fetch(tmp_path, {"dataset": "cifar10", "url": server.url(ARCHIVE),
                                          "md5": "0" * 32}, capsys)
    assert code == 2 and len(err) == 1
    assert f"md5 {PAYLOAD_MD5} does not match the expected {'0' * 32}" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".raw*"))


def test_http_error_is_one_line(tmp_path, server, capsys):
    code, err, out = run_fetch(tmp_path, {"dataset": "cifar10", "url": server.url("nope.tar.gz"),
                                          "md5": PAYLOAD_MD5}, capsys)
    assert code == 2 and len(err) == 1 and "HTTP 404" in err[0] and not out.exists()


@pytest.mark.parametrize("url", ["http://cifar-dvc-offline.invalid/cifar-10-python.tar.gz",
                                 "http://127.0.0.1:9/cifar-10-python.tar.gz"])
def test_offline_fails_fast_saying_what_to_do(tmp_path, capsys, url):
    start = time.monotonic()
    code, err, out = run_fetch(tmp_path, {"dataset": "cifar10", "url": url, "md5": PAYLOAD_MD5}, capsys)
    assert time.monotonic() - start < 15
    assert code == 2 and len(err) == 1 and not out.exists()
    assert "put cifar-10-python.tar.gz" in err[0] and "~/.keras/datasets/" in err[0]
    assert "make demo" in err[0] and PAYLOAD_MD5 in err[0]


def test_local_path_and_file_url(tmp_path, capsys):
    local = tmp_path / "downloads" / "my copy.tar.gz"
    local.parent.mkdir()
    local.write_bytes(PAYLOAD)
    for url in (str(local), local.as_uri()):
        code, err, out = run_fetch(tmp_path, {"dataset": "cifar10", "url": url, "md5": PAYLOAD_MD5}, capsys)
        assert (code, err) == (0, [])
        assert (out / ARCHIVE).read_bytes() == PAYLOAD
    code, err, _ = run_fetch(tmp_path, {"dataset": "cifar10", "url": str(tmp_path / "absent.tar.gz"),
                                        "md5": PAYLOAD_MD5}, capsys)
    assert code == 2 and "absent.tar.gz does not exist" in err[0]


def test_reuses_a_keras_cache_copy_with_matching_md5(tmp_path, server, home, capsys):
    keras_dir = home / ".keras" / "datasets"
    keras_dir.mkdir(parents=True)
    (keras_dir / "cifar-10-batches-py-target_archive").write_bytes(PAYLOAD)  # Keras 3's name for it
    code, err, out = run_fetch(tmp_path, {"dataset": "cifar10", "url": server.url(ARCHIVE),
                                          "md5": PAYLOAD_MD5}, capsys)
    assert (code, err) == (0, [])
    assert (out / ARCHIVE).read_bytes() == PAYLOAD
    assert server.requests == [], "a cached copy must not be downloaded again"


def test_ignores_a_cache_copy_with_another_md5(tmp_path, server, home, capsys):
    keras_dir = home / ".keras" / "datasets"
    keras_dir.mkdir(parents=True)
    (keras_dir / ARCHIVE).write_bytes(b"stale")
    code, err, _ = run_fetch(tmp_path, {"dataset": "cifar10", "url": server.url(ARCHIVE),
                                          "md5": PAYLOAD_MD5}, capsys)
    assert (code, err) == (0, [])
    assert server.requests == [f"/{ARCHIVE}"]


def test_mnist_fetches_four_files_from_a_base_url(tmp_path, server):
    root = Path(server.httpd.RequestHandlerClass.keywords["directory"])
    md5s = []
    for i, (name, _) in enumerate(sources.MNIST_FILES):
        data = f"file {i}".encode()
        (root / name).write_bytes(data)
        md5s.append(hashlib.md5(data).hexdigest())
    files = sources.resolve(DataParams(dataset="mnist", url=server.url(""), md5=",".join(md5s)))
    lines: list[str] = []
    download.fetch_all(files, tmp_path / "raw", cache_dirs=[], log=lines.append)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(n for n, _ in sources.MNIST_FILES)
    assert len(server.requests) == 4 and any("downloading" in line for line in lines)


def test_a_hanging_name_lookup_times_out(monkeypatch):
    """Socket timeouts do not cover DNS; fetch bounds the lookup itself."""
    monkeypatch.setattr(download.socket, "getaddrinfo", lambda *args: time.sleep(5))
    spec = sources.RemoteFile("x.tar.gz", "http://slow-dns.example/x.tar.gz", "0" * 32)
    start = time.monotonic()
    with pytest.raises(FetchError, match=r"name lookup of slow-dns\.example timed out"):
        download.fetch_file(spec, Path("/nonexistent/x.tar.gz"), cache_dirs=[], timeout=0.3)
    assert time.monotonic() - start < 2


def test_progress_bar_on_a_terminal_and_log_lines_otherwise(tmp_path, server, monkeypatch, capsys):
    spec = sources.RemoteFile(ARCHIVE, server.url(ARCHIVE), PAYLOAD_MD5)
    lines: list[str] = []
    monkeypatch.setattr(download, "CHUNK", 64 * 1024)  # several reads, so progress is reported
    download.fetch_file(spec, tmp_path / "a" / ARCHIVE, cache_dirs=[], log=lines.append)
    assert [line for line in lines if "%)" in line] == [
        "fetch: 0.3 of 1.0 MB (25%)", "fetch: 0.5 of 1.0 MB (50%)", "fetch: 0.8 of 1.0 MB (75%)",
        "fetch: 1.0 of 1.0 MB (100%)"]
    lines.clear()
    monkeypatch.setattr(download.sys.stderr, "isatty", lambda: True)
    download.fetch_file(spec, tmp_path / "b" / ARCHIVE, cache_dirs=[], log=lines.append)
    assert f"{ARCHIVE}:   0%|" in capsys.readouterr().err  # tqdm's bar, drawn and cleared
    assert not [line for line in lines if "%)" in line]
    assert (tmp_path / "b" / ARCHIVE).read_bytes() == PAYLOAD


def test_sources_defaults_and_mismatches():
    (cifar10,) = sources.resolve(DataParams(dataset="cifar10"))
    assert (cifar10.url, cifar10.md5) == (sources.CIFAR10_URL, "c58f30108f718f92721af3b95e74349a")
    (cifar100,) = sources.resolve(DataParams(dataset="cifar100"))
    assert (cifar100.name, cifar100.md5) == ("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85")
    mnist_files = sources.resolve(DataParams(dataset="mnist"))
    assert mnist_files[0].url == sources.MNIST_URL + "train-images-idx3-ubyte.gz"
    with pytest.raises(ParamsError, match=r"official cifar10 URL but data\.dataset is cifar100"):
        sources.resolve(DataParams(dataset="cifar100", url=sources.CIFAR10_URL))
    with pytest.raises(ParamsError, match="mnist needs 4 comma-separated md5s"):
        sources.resolve(DataParams(dataset="mnist", md5="0" * 32))
    with pytest.raises(ParamsError, match="unsupported scheme 'ftp'"):
        download.local_path("ftp://example.org/x.tar.gz")


def test_fetch_error_type_for_missing_md5_match(tmp_path):
    spec = sources.RemoteFile("x.bin", str(tmp_path / "x.bin"), "1" * 32)
    (tmp_path / "x.bin").write_bytes(b"abc")
    with pytest.raises(FetchError):
        download.fetch_file(spec, tmp_path / "out" / "x.bin", cache_dirs=[])
    assert not (tmp_path / "out" / "x.bin").exists()


def test_synthetic_fetch_is_deterministic(tmp_path, capsys):
    small = {"dataset": "synthetic",
             "synthetic": {"num_classes": 3, "train_per_class": 5, "test_per_class": 2}}
    digests = []
    for seed in (1, 1, 2):
        code, err, out = run_fetch(tmp_path, small, capsys, seed=seed)
        assert (code, err) == (0, [])
        digests.append(download.md5_file(out / sources.SYNTHETIC_ARCHIVE))
    assert digests[0] == digests[1] != digests[2]


@pytest.mark.parametrize(("data", "expected"), [
    ({"dataset": "synthetic", "synthetic": {"train_per_class": "many"}},
     "data.synthetic.train_per_class: expected int, got 'many' (str)"),
    ({"dataset": "synthetic", "synthetic": {"image_size": 4}}, "image_size must be in 8..64"),
    ({"dataset": "cifar10", "md5": "xyz"}, "md5 must be 32 hex digits"),
    ({"dataset": "svhn"}, "data.dataset: expected one of"),
])
def test_bad_params_are_one_line(tmp_path, capsys, data, expected):
    code, err, out = run_fetch(tmp_path, data, capsys)
    assert code == 2 and len(err) == 1 and expected in err[0] and not out.exists()
