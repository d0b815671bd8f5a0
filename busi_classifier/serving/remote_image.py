"""The optional ``{"url": "https://..."}`` input: fetch an image for the caller, safely.

Off unless IMAGE_URL_ALLOWLIST names the hosts it may fetch from. A server that fetches
URLs for strangers is a classic server-side request forgery hole (the instance metadata
service at 169.254.169.254, services inside a VPC, localhost), so every hop is checked:

* https only, default port (443) only, no user:password@ in the URL;
* the host must match the allowlist: ``images.example.org`` (exactly that host),
  ``*.example.org`` (its subdomains), ``*`` (any host; the address checks still apply);
* the host is resolved once and EVERY address must be public: private, loopback,
  link-local, shared (100.64/10), multicast, reserved and unspecified addresses are
  refused, also when embedded in IPv6 (IPv4-mapped, 6to4, Teredo, NAT64);
* the connection goes to the address that was checked (no second DNS lookup that a
  rebinding DNS server could answer differently), with SNI and certificate
  verification against the host name;
* redirects (at most 3) go through the same checks;
* the body is capped (Content-Length checked first, then counted while reading) and
  the whole fetch has one deadline.

Environment: IMAGE_URL_ALLOWLIST (comma-separated host patterns; empty = off),
IMAGE_URL_TIMEOUT_S (default 5), IMAGE_URL_MAX_BYTES (default: the request image cap).

Standard library only; the handler imports this module lazily, on the first url request.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import ssl
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
    what the API answers."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def refused(message: str) -> RemoteImageError:
    return RemoteImageError(400, "url_not_allowed", message)


def failed(message: str) -> RemoteImageError:
    return RemoteImageError(400, "url_fetch_failed", message)


@dataclass(frozen=True)
class UrlPolicy:
    allowlist: tuple[str, ...]
    max_bytes: int
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_redirects: int = MAX_REDIRECTS


def policy_from_env(max_bytes: int, environ=None) -> UrlPolicy | None:
    """The policy IMAGE_URL_ALLOWLIST describes; None when the url input is off."""
    environ = os.environ if environ is None else environ
    patterns = tuple(p.strip().lower().rstrip(".") for p in environ.get("IMAGE_URL_ALLOWLIST", "").split(","))
    patterns = tuple(p for p in patterns if p)
    if not patterns:
        return None
    try:
        timeout = float(environ.get("IMAGE_URL_TIMEOUT_S") or DEFAULT_TIMEOUT_S)
        cap = int(environ.get("IMAGE_URL_MAX_BYTES") or max_bytes)
    except ValueError:
        timeout, cap = DEFAULT_TIMEOUT_S, max_bytes
    return UrlPolicy(patterns, min(cap, max_bytes), max(0.1, timeout))


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


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to ``address`` (already checked) with SNI and certificate for ``host``."""

    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class Response:
    """What a connector returns: status, headers (lower-case names) and a reader."""

    def __init__(self, status: int, headers: dict[str, str], read: Callable[[int], bytes], close=lambda: None):
        self.status, self.headers, self.read, self.close = status, headers, read, close


def open_https(address: str, host: str, port: int, target: str, timeout: float,
               context: ssl.SSLContext | None = None) -> Response:
    """GET ``target`` from ``host`` over HTTPS, connecting to ``address``."""
    connection = _PinnedHTTPSConnection(host, port, address, timeout, context or ssl.create_default_context())
    try:
        connection.request("GET", target, headers={"User-Agent": USER_AGENT, "Accept": "image/*"})
        response = connection.getresponse()
    except BaseException:
        connection.close()
        raise
    headers = {k.lower(): v for k, v in response.getheaders()}

    def close() -> None:
        response.close()
        connection.close()

    return Response(response.status, headers, response.read, close)


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
    except ValueError:
        raise refused("the url is not a valid URL") from None
    if parts.scheme.lower() != "https":
        raise refused("only https URLs are fetched")
    if parts.username is not None or parts.password is not None:
        raise refused("the url may not contain user:password@")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise refused("the url has no host")
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise refused("the url's host name is not valid") from None
    if port not in (None, 443):
        raise refused("only the default https port (443) is fetched")
    if not host_allowed(host, policy.allowlist):
        raise refused(f"host {host} is not in the url allowlist")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if any(c in path for c in "\r\n ") or not path.isascii():
        path = urllib.parse.quote(path, safe="/?&=%:@!$'()*+,;~-._")
    return Target(url, host, 443, path)


def _remaining(deadline: float, timeout: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise failed(f"fetching the url timed out after {timeout:g} s")
    return left


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
        except (OSError, UnicodeError):
            raise failed(f"could not resolve host {target.host}") from None
        if not addresses:
            raise failed(f"could not resolve host {target.host}")
        if not all(is_public_address(a) for a in addresses):
            raise refused(f"host {target.host} resolves to a private, loopback or link-local address")
        response = _connect_any(addresses, target, connect, deadline, policy.timeout_s)
        try:
            if response.status in REDIRECT_STATUSES:
                location = response.headers.get("location")
                if not location:
                    raise failed(f"the url answered HTTP {response.status} without a Location")
                url = urllib.parse.urljoin(target.url, location)
                continue
            if response.status != 200:
                raise failed(f"the url answered HTTP {response.status}")
            return _read_capped(response, policy, deadline)
        finally:
            response.close()
    raise failed(f"the url redirected more than {policy.max_redirects} times")


def _connect_any(addresses: list[str], target: Target, connect, deadline: float, timeout: float) -> Response:
    last: Exception | None = None
    for address in addresses:
        try:
            return connect(address, target.host, target.port, target.path, _remaining(deadline, timeout))
        except RemoteImageError:
            raise
        except TimeoutError:
            raise failed(f"fetching the url timed out after {timeout:g} s") from None
        except ssl.SSLError:
            raise failed(f"TLS with {target.host} failed (certificate not valid for the host?)") from None
        except (OSError, http.client.HTTPException) as exc:
            last = exc
    raise failed(f"could not connect to {target.host} ({type(last).__name__})")


def _read_capped(response: Response, policy: UrlPolicy, deadline: float) -> bytes:
    too_large = RemoteImageError(
        413, "payload_too_large", f"the image at the url is larger than the limit of {policy.max_bytes} bytes")
    length = response.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > policy.max_bytes:
        raise too_large
    chunks, total = [], 0
    while True:
        _remaining(deadline, policy.timeout_s)
        try:
            chunk = response.read(CHUNK)
        except TimeoutError:
            raise failed(f"fetching the url timed out after {policy.timeout_s:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise failed(f"reading the url failed ({type(exc).__name__})") from None
        if not chunk:
            break
        total += len(chunk)
        if total > policy.max_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)
