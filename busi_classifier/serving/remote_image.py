"""The optional ``{"url": "https://..."}`` input: fetch an image for the caller, safely.

Off unless IMAGE_URL_ALLOWLIST names the hosts it may fetch from. A server that fetches
URLs for strangers is a classic server-side request forgery hole (the instance metadata
service at 169.254.169.254, services inside a VPC, localhost), so every hop is checked:

* https only, default port (443) only, no user:password@ in the URL;
* the host name is IDNA-encoded, then may hold only letters, digits, hyphens and dots
  (no NUL, no IP address literal) before the allowlist is consulted;
* the host must match the allowlist: ``images.example.org`` (exactly that host),
  ``*.example.org`` (its subdomains), ``*`` (any host; the address checks still apply);
* the host is resolved once and EVERY address must be public: private, loopback,
  link-local, shared (100.64/10), multicast, reserved and unspecified addresses are
  refused, also when embedded in IPv6 (IPv4-mapped, 6to4, Teredo, NAT64);
* the connection goes to the address that was checked (no second DNS lookup that a
  rebinding DNS server could answer differently), with SNI and certificate
  verification against the host name;
* redirects (at most 3) go through the same checks; a Location that is not a valid URL
  is a failed fetch;
* the body is capped (Content-Length checked first, then counted while reading) and
  the whole fetch has one deadline, enforced by a watchdog that shuts the socket down
  when it passes (a server trickling its handshake, headers or body one byte a second
  is cut at the deadline, not when it gives up);
* a host that does not resolve, resolves to a refused address, or does not accept the
  connection gets one and the same answer, so the answers tell nothing of internal DNS;
* messages are fixed sentences; what went wrong in detail is in ``detail``, for the log.

Environment: IMAGE_URL_ALLOWLIST (comma-separated host patterns; empty = off),
IMAGE_URL_TIMEOUT_S (default 5), IMAGE_URL_MAX_BYTES (default: the request image cap).

Standard library only; the handler imports this module lazily, on the first url request.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_TIMEOUT_S = 5.0
MAX_REDIRECTS = 3
MAX_URL_CHARS = 2048
REDIRECT_STATUSES = {301, 302, 303, 307, 308}
USER_AGENT = "busi-classifier-url-fetch/0.1"
CHUNK = 64 * 1024

# IPv6 prefixes that carry an IPv4 address (checked as that IPv4 address)
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class RemoteImageError(Exception):
    """A url input that is refused or could not be fetched; status/code/message are
    what the API answers (a fixed sentence); ``detail`` is for the log only."""

    def __init__(self, status: int, code: str, message: str, detail: str = ""):
        super().__init__(message)
        self.status, self.code, self.message, self.detail = status, code, message, detail


def refused(message: str, detail: str = "") -> RemoteImageError:
    return RemoteImageError(400, "url_not_allowed", message, detail)


def failed(message: str, detail: str = "") -> RemoteImageError:
    return RemoteImageError(400, "url_fetch_failed", message, detail)


# The one answer for every DNS or connection failure, and for a host whose addresses
# are refused: different answers would let a caller map internal DNS.
UNREACHABLE = "the url's host could not be reached (it must resolve to public addresses and accept HTTPS)"
BAD_HOST = "the url's host name is not valid (letters, digits, hyphens and dots only)"
IP_LITERAL = "the url must name a host, not an IP address"
BAD_REDIRECT = "the url redirected to a location that is not a valid URL"
READ_FAILED = "reading the image from the url failed"
_HOST_NAME = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")


def timed_out(timeout: float, detail: str = "") -> RemoteImageError:
    return failed(f"fetching the url timed out after {timeout:g} s", detail)


@dataclass(frozen=True)
class UrlPolicy:
    allowlist: tuple[str, ...]
    max_bytes: int
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_redirects: int = MAX_REDIRECTS


def host_allowed(host: str, allowlist: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in allowlist:
        if pattern == "*" or pattern == host:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
            return True
    return False


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # (server, client): the client is the one reached
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public_address(text: str) -> bool:
    """True for a globally routable unicast address; False for everything a server
    inside AWS must never be made to call (and for anything unparsable)."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            address = embedded
    return not (
        address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
        or address.is_reserved or address.is_unspecified or not address.is_global
    )


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the system resolver)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


class Watchdog:
    """Shuts the watched socket down when ``seconds`` have passed: a blocked connect,
    TLS handshake, header read or body read then ends at once, however slowly the
    server trickles its bytes (a socket timeout alone restarts with every byte)."""

    def __init__(self, seconds: float):
        self.expired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.expired:
                self._shutdown()

    def _fire(self) -> None:
        with self._lock:
            self.expired = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cancel(self) -> None:
        self._timer.cancel()


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to ``address`` (already checked) with SNI and certificate for ``host``;
    the watchdog holds the raw socket from its creation on."""

    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext | None,
                 watchdog: Watchdog):
        super().__init__(host, port, timeout=timeout, context=context)
        self._address, self._watchdog, self._tls = address, watchdog, context is not None

    def connect(self) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self._address else socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._watchdog.watch(sock)
            sock.settimeout(self.timeout)
            sock.connect((self._address, self.port))
            self.sock = self._context.wrap_socket(sock, server_hostname=self.host) if self._tls else sock
        except BaseException:
            sock.close()
            raise


class Response:
    """What a connector returns: status, headers (lower-case names), a reader, and
    whether its deadline has passed."""

    def __init__(self, status: int, headers: dict[str, str], read: Callable[[int], bytes], close=lambda: None,
                 expired: Callable[[], bool] = lambda: False):
        self.status, self.headers, self.read, self.close, self.expired = status, headers, read, close, expired


def open_https(address: str, host: str, port: int, target: str, timeout: float,
               context: ssl.SSLContext | None = None, tls: bool = True) -> Response:
    """GET ``target`` from ``host`` over HTTPS, connecting to ``address``; everything,
    the body included, must happen within ``timeout`` seconds. ``tls=False`` speaks
    plain HTTP (for tests against a loopback server; fetch_image never uses it)."""
    watchdog = Watchdog(timeout)
    context = (context or ssl.create_default_context()) if tls else None
    connection = _PinnedHTTPSConnection(host, port, address, timeout, context, watchdog)
    try:
        connection.request("GET", target, headers={"User-Agent": USER_AGENT, "Accept": "image/*"})
        response = connection.getresponse()
    except BaseException as exc:
        watchdog.cancel()
        connection.close()
        if watchdog.expired and not isinstance(exc, TimeoutError):
            raise TimeoutError("the watchdog shut the socket down") from exc
        raise
    headers = {k.lower(): v for k, v in response.getheaders()}

    def close() -> None:
        watchdog.cancel()
        response.close()
        connection.close()

    return Response(response.status, headers, response.read, close, lambda: watchdog.expired)


@dataclass(frozen=True)
class Target:
    url: str
    host: str
    port: int
    path: str  # path and query, as sent in the request line


def check_url(url: str, policy: UrlPolicy) -> Target:
    """Refuse anything but an https URL on port 443 to an allowlisted host."""
    if len(url) > MAX_URL_CHARS:
        raise refused(f"the url is longer than {MAX_URL_CHARS} characters")
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise refused("the url is not a valid URL", str(exc)) from None
    if parts.scheme.lower() != "https":
        raise refused("only https URLs are fetched")
    if parts.username is not None or parts.password is not None:
        raise refused("the url may not contain user:password@")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise refused("the url has no host")
    if port not in (None, 443):
        raise refused("only the default https port (443) is fetched")
    host = valid_host_name(host)
    if not host_allowed(host, policy.allowlist):
        raise refused("the url's host is not in the url allowlist", host)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if any(c in path for c in "\r\n ") or not path.isascii():
        path = urllib.parse.quote(path, safe="/?&=%:@!$'()*+,;~-._")
    return Target(url, host, 443, path)


def valid_host_name(host: str) -> str:
    """``host`` IDNA-encoded and lower-cased, when it is a host name of letters, digits,
    hyphens and dots; refused otherwise (NUL and other control characters, spaces, %,
    underscores, IP address literals in any spelling)."""
    try:
        ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise refused(BAD_HOST, repr(host)) from None
    ascii_host = ascii_host.lower()
    if ":" in ascii_host or ascii_host.rsplit(".", 1)[-1][:1].isdigit():  # no top-level domain starts with a digit
        raise refused(IP_LITERAL, repr(host))
    if len(ascii_host) > 253 or not _HOST_NAME.fullmatch(ascii_host):
        raise refused(BAD_HOST, repr(host))
    return ascii_host


def _remaining(deadline: float, timeout: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise timed_out(timeout, "deadline passed")
    return left


def _redirect_target(base: str, location: str) -> str:
    """The absolute URL a Location header points to; a malformed one is a failed fetch."""
    try:
        url = urllib.parse.urljoin(base, location.strip())
        parts = urllib.parse.urlsplit(url)
        _ = parts.port, parts.hostname
    except ValueError as exc:
        raise failed(BAD_REDIRECT, f"Location {location[:200]!r}: {exc}") from None
    if len(url) > MAX_URL_CHARS or any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise failed(BAD_REDIRECT, f"Location {location[:200]!r}")
    return url


def fetch_image(url: str, policy: UrlPolicy, resolve: Callable[[str, int], list[str]] | None = None,
                connect: Callable[..., Response] | None = None) -> bytes:
    """The bytes at ``url``, following the checks in the module docstring. Raises
    RemoteImageError (url_not_allowed, url_fetch_failed or payload_too_large)."""
    resolve = resolve or resolve_host
    connect = connect or open_https
    deadline = time.monotonic() + policy.timeout_s
    for _hop in range(policy.max_redirects + 1):
        target = check_url(url, policy)
        try:
            addresses = resolve(target.host, target.port)
        except (OSError, UnicodeError) as exc:
            raise failed(UNREACHABLE, f"{target.host}: resolution failed: {type(exc).__name__}: {exc}") from None
        if not addresses:
            raise failed(UNREACHABLE, f"{target.host}: no addresses")
        refused_addresses = [a for a in addresses if not is_public_address(a)]
        if refused_addresses:
            raise failed(UNREACHABLE, f"{target.host}: refused addresses {refused_addresses}")
        response = _connect_any(addresses, target, connect, deadline, policy.timeout_s)
        try:
            if response.status in REDIRECT_STATUSES:
                location = response.headers.get("location")
                if not location:
                    raise failed("the url answered a redirect without a Location", f"HTTP {response.status}")
                url = _redirect_target(target.url, location)
                continue
            if response.status != 200:
                raise failed("the url did not answer 200 OK", f"HTTP {response.status}")
            return _read_capped(response, policy, deadline)
        finally:
            response.close()
    raise failed(f"the url redirected more than {policy.max_redirects} times")


def _connect_any(addresses: list[str], target: Target, connect, deadline: float, timeout: float) -> Response:
    details = []
    for address in addresses:
        try:
            return connect(address, target.host, target.port, target.path, _remaining(deadline, timeout))
        except RemoteImageError:
            raise
        except TimeoutError as exc:
            raise timed_out(timeout, f"{target.host} at {address}: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            if time.monotonic() >= deadline:
                raise timed_out(timeout, f"{target.host} at {address}: {type(exc).__name__}") from None
            if isinstance(exc, ssl.SSLError):  # the certificate: no oracle, DNS already answered
                raise failed("TLS with the url's host failed (its certificate is not valid for it?)",
                             f"{target.host} at {address}: {type(exc).__name__}: {exc}") from None
            details.append(f"{address}: {type(exc).__name__}: {exc}")
    raise failed(UNREACHABLE, f"{target.host}: " + "; ".join(details))


def _read_capped(response: Response, policy: UrlPolicy, deadline: float) -> bytes:
    too_large = RemoteImageError(
        413, "payload_too_large", f"the image at the url is larger than the limit of {policy.max_bytes} bytes")
    length = (response.headers.get("content-length") or "").strip()
    if re.fullmatch(r"[0-9]{1,19}", length) and int(length) > policy.max_bytes:  # ASCII digits only
        raise too_large
    chunks, total = [], 0
    while True:
        _remaining(deadline, policy.timeout_s)
        try:
            chunk = response.read(CHUNK)
        except TimeoutError as exc:
            raise timed_out(policy.timeout_s, f"read: {exc}") from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if response.expired() or time.monotonic() >= deadline:
                raise timed_out(policy.timeout_s, f"read: {type(exc).__name__}") from None
            raise failed(READ_FAILED, f"read: {type(exc).__name__}: {exc}") from None
        if not chunk and response.expired():
            raise timed_out(policy.timeout_s, "read: the watchdog shut the socket down")
        if not chunk:
            break
        total += len(chunk)
        if total > policy.max_bytes:
            raise too_large
        chunks.append(chunk)
    if re.fullmatch(r"[0-9]{1,19}", length) and total != int(length):
        raise failed(READ_FAILED, f"read: {total} bytes of a Content-Length of {length}")
    return b"".join(chunks)
