"""Fetch an image URL for the web demo without letting a client reach the server's own network.

A URL given by a web client makes the server open a connection, so a careless fetcher is a
server-side request forgery (SSRF) hole: ``http://169.254.169.254/`` (cloud metadata),
``http://127.0.0.1:6379/`` or ``http://intranet.local/`` would be fetched on the client's behalf.
``UrlFetcher.fetch`` therefore:

- accepts only ``http`` and ``https`` URLs without user info;
- resolves the host name itself and refuses it if ANY of its addresses is loopback, private,
  link-local, multicast, reserved, unspecified or otherwise not globally routable (IPv4-mapped,
  6to4 and Teredo IPv6 addresses are judged by the IPv4 address they carry);
- connects to the very address it checked (the TLS handshake and ``Host`` header still use the
  name), so a DNS answer that changes between the check and the connection (DNS rebinding) cannot
  redirect it;
- follows at most ``max_redirects`` redirects, each checked the same way before it is followed;
- caps the body (``Content-Length`` checked first, then the stream counted, aborted when over)
  and the total time (one deadline for connecting, redirects and reading; every socket
  operation's timeout is the time left).

``allow_private=True`` lifts only the address check (the tests fetch from a loopback server).
The resolver and the connector are injectable so that tests can simulate public DNS.
Failures raise ``UrlFetchError`` subclasses carrying the HTTP status the web API answers with.

Reads and writes nothing but the network connection it opens. Used by ``cifar_dvc.serve.app``.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from cifar_dvc.errors import FetchError

Resolver = Callable[[str, int], list[str]]  # (host, port) -> IP addresses as strings
Connector = Callable[[str, int, float], socket.socket]  # (ip, port, timeout) -> connected socket

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_PRINTABLE_ASCII = "".join(chr(c) for c in range(33, 127))
_USER_AGENT = "cifar-dvc-serve/1 (+image classification demo)"


class UrlFetchError(FetchError):
    """A URL the server will not or could not fetch; ``status`` is the HTTP answer for the client."""

    status = 400


class UrlRefusedError(UrlFetchError):
    """Scheme, form or address of the URL is not allowed."""

    status = 400


class UrlTooLargeError(UrlFetchError):
    """The body is larger than the cap."""

    status = 413


class UrlTimeoutError(UrlFetchError):
    """The fetch did not finish within the time cap."""

    status = 504


class UpstreamError(UrlFetchError):
    """The remote server could not be reached or did not answer 200."""

    status = 502


def system_resolver(host: str, port: int) -> list[str]:
    """All addresses ``host`` resolves to, by the system resolver (IP literals resolve to themselves)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UpstreamError(f"cannot resolve host {host!r}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def direct_connector(ip: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to exactly ``ip``:``port``."""
    return socket.create_connection((ip, port), timeout=timeout)


def address_refusal(ip: str) -> str | None:
    """Why a client-supplied URL must not reach ``ip``, or None when it is a public unicast address."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return "not an IP address"
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = addr.ipv4_mapped or addr.sixtofour or (addr.teredo[1] if addr.teredo else None)
        if embedded is not None:
            return address_refusal(str(embedded))
    checks = (
        ("loopback", addr.is_loopback),
        ("unspecified", addr.is_unspecified),
        ("link-local", addr.is_link_local),
        ("multicast", addr.is_multicast),
        ("reserved", addr.is_reserved),
        ("private", addr.is_private),
    )
    for name, hit in checks:
        if hit:
            return name
    if not addr.is_global:  # e.g. 100.64.0.0/10 shared address space
        return "not globally routable"
    return None


@dataclass
class UrlFetcher:
    """Fetches image bytes from client-supplied URLs under the rules in the module docstring."""

    max_bytes: int = 10 * 1024 * 1024  # largest body accepted
    timeout: float = 10.0  # seconds for the whole fetch, redirects included
    max_redirects: int = 3  # redirects followed before giving up
    allow_private: bool = False  # True lets URLs reach loopback/private addresses (tests only)
    resolver: Resolver = field(default=system_resolver)  # host name -> addresses
    connector: Connector = field(default=direct_connector)  # opens the TCP connection to a checked IP
    ssl_context: ssl.SSLContext | None = None  # certificate checks for https; None = system CAs

    def fetch(self, url: str) -> bytes:
        """The body of ``url`` after at most ``max_redirects`` checked redirects."""
        deadline = time.monotonic() + self.timeout
        for _ in range(self.max_redirects + 1):
            target = _parse(url)
            ips = self._checked_ips(target)
            status, location, body = self._get(target, ips, deadline)
            if status in REDIRECT_STATUSES:
                if not location:
                    raise UpstreamError(f"the URL answered HTTP {status} without a Location")
                url = urllib.parse.urljoin(url, location)
                continue
            if status != 200 or body is None:
                raise UpstreamError(f"the URL answered HTTP {status}")
            return body
        raise UpstreamError(f"more than {self.max_redirects} redirects")

    def _checked_ips(self, target: _Target) -> list[str]:
        """The target host's addresses, in resolver order, after the policy check of every one."""
        addresses = self.resolver(target.host, target.port)
        if not addresses:
            raise UpstreamError(f"cannot resolve host {target.host!r}")
        if not self.allow_private:
            for ip in addresses:
                reason = address_refusal(ip)
                if reason is not None:
                    # Name the host only: echoing internal addresses back would help a prober.
                    noun = "" if reason.endswith("address") else " address"
                    raise UrlRefusedError(f"refused: {target.host} is {_an(reason)}{noun}")
        return addresses

    def _get(self, target: _Target, ips: list[str], deadline: float) -> tuple[int, str | None, bytes | None]:
        """One GET to the first of ``ips`` that connects; status, Location and (for 200) the capped body."""
        conn: _PinnedConnection | None = None
        response: http.client.HTTPResponse | None = None
        try:
            context = self.ssl_context or ssl.create_default_context()
            conn = _PinnedConnection(target, ips, self.connector, context, _remaining(deadline))
            conn.request("GET", target.path, headers={
                "User-Agent": _USER_AGENT, "Accept": "image/*", "Accept-Encoding": "identity",
                "Connection": "close"})
            response = conn.getresponse()
            if response.status != 200:
                return response.status, response.getheader("Location"), None
            length = response.getheader("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > self.max_bytes:
                raise UrlTooLargeError(f"the image is larger than {_mb(self.max_bytes)}")
            return 200, None, self._read_capped(conn, response, deadline)
        except TimeoutError as exc:  # socket.timeout is TimeoutError since Python 3.10
            raise UrlTimeoutError(f"the URL did not answer within {self.timeout:g} s") from exc
        except ssl.SSLError as exc:
            raise UpstreamError(f"TLS failed for {target.host}: {exc.reason or 'handshake error'}") from exc
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise UpstreamError(f"cannot fetch from {target.host}: {type(exc).__name__}") from exc
        finally:
            if response is not None:
                response.close()
            if conn is not None:
                conn.close()

    def _read_capped(self, conn: _PinnedConnection, response: http.client.HTTPResponse,
                     deadline: float) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            # Checked on every chunk, so a server dripping one byte at a time cannot outlast it;
            # the socket's timeout shrinks with it, so a server that stalls cannot either.
            remaining = _remaining(deadline)
            if conn.raw_sock is not None:
                conn.raw_sock.settimeout(remaining)
            chunk = response.read1(_CHUNK)
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > self.max_bytes:
                raise UrlTooLargeError(f"the image is larger than {_mb(self.max_bytes)}")
            chunks.append(chunk)


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str


def _parse(url: str) -> _Target:
    if not isinstance(url, str) or len(url) > 2048:
        raise UrlRefusedError("url must be a string of at most 2048 characters")
    if any(ord(c) < 33 for c in url):
        raise UrlRefusedError("url must not contain spaces or control characters")
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = repr(scheme) if scheme else "a URL without scheme"
        raise UrlRefusedError(f"only http and https URLs are fetched, not {shown}")
    if parts.username is not None or parts.password is not None:
        raise UrlRefusedError("URLs with user names or passwords are not fetched")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise UrlRefusedError("the URL's port is not a number between 0 and 65535") from None
    if not host:
        raise UrlRefusedError("the URL has no host")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    # http.client sends the path as ASCII: percent-encode anything else (IRIs such as /café.jpg).
    path = urllib.parse.quote(path, safe=_PRINTABLE_ASCII)
    return _Target(scheme, host, port or (443 if scheme == "https" else 80), path)


class _PinnedConnection(http.client.HTTPSConnection):
    """An HTTP(S) connection whose socket goes to a pre-checked IP while Host/SNI keep the name."""

    def __init__(self, target: _Target, ips: list[str], connector: Connector, context: ssl.SSLContext,
                 timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=context)
        self._target = target
        self._ips = ips
        self.default_port = 443 if target.scheme == "https" else 80  # Host header omits the default port
        self._connector = connector
        self.raw_sock: socket.socket | None = None

    def connect(self) -> None:
        sock = self._connect_any()
        if self._target.scheme == "https":
            sock = self._context.wrap_socket(sock, server_hostname=self._target.host)
        # http.client drops ``self.sock`` once a "Connection: close" response has begun (the body
        # is still read through the response's file object); keep our own reference for timeouts.
        self.raw_sock = sock
        self.sock = sock

    def _connect_any(self) -> socket.socket:
        """A connection to the first checked address that accepts one (IPv6 may be unreachable)."""
        error: OSError | None = None
        for ip in self._ips:
            try:
                return self._connector(ip, self._target.port, self.timeout)
            except TimeoutError:
                raise  # the deadline is shared: no time left for the next address
            except OSError as exc:
                error = exc
        raise error or OSError("no address to connect to")


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB"


def _an(reason: str) -> str:
    """``a loopback``, ``an unspecified``; ``not globally routable`` reads ``not a globally routable``."""
    if reason.startswith(("a ", "an ", "not a ", "not an ")):
        return reason
    if reason.startswith("not "):
        return f"not {_an(reason[4:])}"
    return f"{'an' if reason[:1] in 'aeiou' else 'a'} {reason}"
