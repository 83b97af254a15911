"""Tests of ``cifar_dvc.serve.urlfetch``: real HTTP from a loopback server, and every SSRF refusal.

The loopback server (``PhotoServer``) is also used by the API tests. Refusal tests run with the
real system resolver on IP literals and ``localhost`` (no network needed) and with an injected
resolver and connector that simulate a public host, so that "a public URL redirecting to a
private one" can be shown offline.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image

from cifar_dvc.serve.urlfetch import (
    UpstreamError,
    UrlFetcher,
    UrlRefusedError,
    UrlTimeoutError,
    UrlTooLargeError,
    address_refusal,
    direct_connector,
    system_resolver,
)

PUBLIC_HOST = "photos.example.test"  # resolved by the injected resolver only
PUBLIC_IP = "93.184.216.34"  # a globally routable address; the injected connector reroutes it
UNREACHABLE_IP = "2606:2800:220:1::1"  # a global IPv6 address the injected connector cannot reach


def jpeg_bytes(width: int = 120, height: int = 90, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    """A small JPEG photo made here: a coloured field with a darker square."""
    img = Image.new("RGB", (width, height), color)
    img.paste((20, 20, 120), (width // 4, height // 4, width // 2, height // 2))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, object]] = {}
    photo: ClassVar[bytes] = b""

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        path = self.path
        if path in ("/photo.jpg", "/caf%C3%A9.jpg"):
            self._send(200, self.photo, "image/jpeg")
        elif path.startswith("/redirect/"):  # /redirect/<n>: n more redirects, then the photo
            n = int(path.rsplit("/", 1)[1])
            self._redirect("/photo.jpg" if n <= 1 else f"/redirect/{n - 1}")
        elif path.startswith("/go?to="):
            self._redirect(path.split("=", 1)[1])
        elif path == "/big":  # honest Content-Length above the cap
            self._send(200, b"\0" * 300_000, "image/jpeg")
        elif path == "/big-chunked":  # no Content-Length: the cap must count the stream
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"\0" * 50_000
            try:
                for _ in range(20):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass  # the client hung up once over the cap, as it should
        elif path.startswith("/slow"):  # /slow?<seconds>: answers after that long (default 5 s)
            time.sleep(float(path.partition("?")[2] or 5))
            self._send(200, self.photo, "image/jpeg")
        elif path == "/drip":  # headers at once, then one byte every 0.1 s: only a total deadline stops it
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(1000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
        elif path == "/not-an-image":
            self._send(200, b"<html>hello</html>", "text/html")
        else:
            self._send(404, b"not found", "text/plain")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):  # the client may hang up early, as the tests want
            self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


class PhotoServer:
    """A real HTTP server on 127.0.0.1 serving a photo, redirects, tar pits and oversize bodies."""

    def __init__(self, photo: bytes) -> None:
        handler = type("Handler", (_Handler,), {"photo": photo})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.photo = photo
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> PhotoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[PhotoServer]:
    with PhotoServer(jpeg_bytes()) as srv:
        yield srv


def loopback_fetcher(**kwargs: object) -> UrlFetcher:
    return UrlFetcher(allow_private=True, **kwargs)  # type: ignore[arg-type]


class SimulatedInternet:
    """An injected resolver + connector: PUBLIC_HOST resolves to PUBLIC_IP, which reaches ``server``."""

    def __init__(self, server: PhotoServer, extra: dict[str, list[str]] | None = None) -> None:
        self.server = server
        self.names = {PUBLIC_HOST: [PUBLIC_IP], **(extra or {})}
        self.resolved: list[str] = []
        self.connected: list[str] = []

    def resolve(self, host: str, port: int) -> list[str]:
        self.resolved.append(host)
        return self.names[host] if host in self.names else system_resolver(host, port)

    def connect(self, ip: str, port: int, timeout: float) -> socket.socket:
        self.connected.append(ip)
        if ip == UNREACHABLE_IP:
            raise OSError(101, "Network is unreachable")
        if ip == PUBLIC_IP:  # port 80 is the photo server; any other port is that loopback port
            return direct_connector("127.0.0.1", self.server.port if port == 80 else port, timeout)
        return direct_connector(ip, port, timeout)

    def fetcher(self, **kwargs: object) -> UrlFetcher:
        return UrlFetcher(resolver=self.resolve, connector=self.connect, **kwargs)  # type: ignore[arg-type]


def test_fetches_a_photo_over_real_http(server: PhotoServer) -> None:
    assert loopback_fetcher().fetch(server.url("/photo.jpg")) == server.photo


def test_follows_up_to_three_redirects_and_no_more(server: PhotoServer) -> None:
    assert loopback_fetcher().fetch(server.url("/redirect/3")) == server.photo
    with pytest.raises(UpstreamError, match="more than 3 redirects"):
        loopback_fetcher().fetch(server.url("/redirect/4"))


def test_http_errors_are_upstream_errors(server: PhotoServer) -> None:
    with pytest.raises(UpstreamError, match="HTTP 404") as info:
        loopback_fetcher().fetch(server.url("/missing"))
    assert info.value.status == 502
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    with pytest.raises(UpstreamError, match="cannot fetch"):
        loopback_fetcher().fetch(f"http://127.0.0.1:{port}/photo.jpg")


@pytest.mark.parametrize("path", ["/big", "/big-chunked"])
def test_body_over_the_cap_is_refused(server: PhotoServer, path: str) -> None:
    with pytest.raises(UrlTooLargeError) as info:
        loopback_fetcher(max_bytes=200_000).fetch(server.url(path))
    assert info.value.status == 413


@pytest.mark.parametrize("path", ["/slow", "/drip"])
def test_total_time_is_capped(server: PhotoServer, path: str) -> None:
    start = time.monotonic()
    with pytest.raises(UrlTimeoutError) as info:
        loopback_fetcher(timeout=0.5).fetch(server.url(path))
    assert info.value.status == 504
    # One deadline for everything, not one per read: the drip would take 100 s, the slow answer 5 s.
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "ftp://example.com/a.jpg", "gopher://example.com/", "javascript:alert(1)",
    "data:image/png;base64,AAAA", "//example.com/a.jpg", "example.com/a.jpg", "",
    "http://user:secret@example.com/a.jpg", "http://", "http://example.com:99999/",
    "http://exa mple.com/a.jpg", "http://example.com/\r\nHost: evil",
])
def test_malformed_urls_and_other_schemes_are_refused(url: str) -> None:
    calls: list[str] = []
    fetcher = UrlFetcher(resolver=lambda host, port: calls.append(host) or [PUBLIC_IP])
    with pytest.raises(UrlRefusedError):
        fetcher.fetch(url)
    assert calls == []  # refused before any DNS lookup


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/", "http://127.8.9.10:8080/x.jpg", "http://localhost/", "http://10.1.2.3/",
    "http://172.16.0.1/", "http://192.168.1.1/", "http://169.254.169.254/latest/meta-data/",
    "http://224.0.0.1/", "http://0.0.0.0/", "http://100.64.0.1/", "http://[::1]/",
    "http://[::ffff:127.0.0.1]/", "http://[fe80::1]/", "http://[fc00::1]/", "http://[ff02::1]/",
    "http://2130706433/", "http://0x7f.1/", "https://127.0.0.1/",
])
def test_internal_addresses_are_refused_after_resolution(url: str) -> None:
    connected: list[str] = []

    def connector(ip: str, port: int, timeout: float) -> socket.socket:
        connected.append(ip)
        raise AssertionError("must not connect")

    with pytest.raises(UrlRefusedError, match="refused") as info:
        UrlFetcher(connector=connector).fetch(url)
    assert info.value.status == 400
    assert connected == []


def test_a_host_name_resolving_to_loopback_is_refused(server: PhotoServer) -> None:
    net = SimulatedInternet(server, extra={"sneaky.example.test": ["127.0.0.1"]})
    with pytest.raises(UrlRefusedError, match=r"sneaky\.example\.test is a loopback address"):
        net.fetcher().fetch(f"http://sneaky.example.test:{server.port}/photo.jpg")
    assert net.connected == []


def test_a_host_with_any_internal_address_is_refused(server: PhotoServer) -> None:
    net = SimulatedInternet(server, extra={"mixed.example.test": [PUBLIC_IP, "10.0.0.7"]})
    with pytest.raises(UrlRefusedError, match="private"):
        net.fetcher().fetch("http://mixed.example.test/photo.jpg")
    assert net.connected == []


def test_simulated_public_host_is_fetched_through_the_checked_address(server: PhotoServer) -> None:
    net = SimulatedInternet(server)
    assert net.fetcher().fetch(f"http://{PUBLIC_HOST}/photo.jpg") == server.photo
    # Resolved once and connected to exactly the address that was checked (no second lookup
    # that a rebinding DNS server could answer differently).
    assert net.resolved == [PUBLIC_HOST]
    assert net.connected == [PUBLIC_IP]


def test_the_next_checked_address_is_tried_when_one_is_unreachable(server: PhotoServer) -> None:
    net = SimulatedInternet(server, extra={"dual.example.test": [UNREACHABLE_IP, PUBLIC_IP]})
    assert net.fetcher().fetch("http://dual.example.test/photo.jpg") == server.photo
    assert net.connected == [UNREACHABLE_IP, PUBLIC_IP]


def test_non_ascii_paths_are_percent_encoded(server: PhotoServer) -> None:
    assert SimulatedInternet(server).fetcher().fetch(f"http://{PUBLIC_HOST}/café.jpg") == server.photo


@pytest.mark.parametrize("target", [
    "http://127.0.0.1:{port}/photo.jpg", "http://10.0.0.1/photo.jpg", "http://169.254.169.254/",
    "http://[::1]:{port}/photo.jpg", "http://localhost:{port}/photo.jpg",
])
def test_a_redirect_from_a_public_url_to_an_internal_one_is_refused(server: PhotoServer, target: str) -> None:
    net = SimulatedInternet(server)
    url = f"http://{PUBLIC_HOST}/go?to=" + target.format(port=server.port)
    with pytest.raises(UrlRefusedError, match="refused"):
        net.fetcher().fetch(url)
    assert net.connected == [PUBLIC_IP]  # the first hop only; the redirect was never followed


def test_redirects_within_the_public_host_are_followed(server: PhotoServer) -> None:
    net = SimulatedInternet(server)
    assert net.fetcher().fetch(f"http://{PUBLIC_HOST}/redirect/2") == server.photo
    assert net.connected == [PUBLIC_IP] * 3  # every hop resolved and checked again


@pytest.fixture(scope="module")
def https_server(server: PhotoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """An HTTPS photo server on loopback with a self-signed certificate for PUBLIC_HOST."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
                    "-subj", f"/CN={PUBLIC_HOST}", "-addext", f"subjectAltName=DNS:{PUBLIC_HOST}"],
                   check=True, capture_output=True)
    with PhotoServer(server.photo) as tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        tls.httpd.socket = context.wrap_socket(tls.httpd.socket, server_side=True)
        yield tls.port, cert


def test_https_checks_the_certificate_against_the_name_not_the_pinned_ip(
        server: PhotoServer, https_server: tuple[int, Path]) -> None:
    port, cert = https_server
    url = f"https://{PUBLIC_HOST}:{port}/photo.jpg"
    net = SimulatedInternet(server)
    trusting = ssl.create_default_context(cafile=str(cert))
    assert net.fetcher(ssl_context=trusting).fetch(url) == server.photo
    assert net.connected == [PUBLIC_IP]  # TLS to the checked address, SNI and certificate for the name
    with pytest.raises(UpstreamError, match="TLS failed") as info:
        net.fetcher().fetch(url)  # the system CAs do not know the self-signed certificate
    assert info.value.status == 502


def test_an_unresolvable_host_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError, match="cannot resolve"):
        UrlFetcher(resolver=lambda host, port: []).fetch("http://nowhere.example.test/")


@pytest.mark.parametrize(("ip", "reason"), [
    ("127.0.0.1", "loopback"), ("10.0.0.1", "private"), ("169.254.169.254", "link-local"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("0.0.0.0", "unspecified"),
    ("::1", "loopback"), ("::ffff:10.0.0.1", "private"), ("2002:7f00:1::", "loopback"),
    ("240.0.0.1", "reserved"), ("100.64.0.1", "not globally routable"), ("fe80::1%eth0", "link-local"),
    ("93.184.216.34", None), ("2606:2800:220:1:248:1893:25c8:1946", None), ("8.8.8.8", None),
])
def test_address_policy(ip: str, reason: str | None) -> None:
    assert address_refusal(ip) == reason
