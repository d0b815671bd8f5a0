"""The optional {"url": ...} input: off by default; with an allowlist it refuses
non-https URLs, other ports, hosts off the list, and every address a server in AWS must
never be made to call (also after redirects and DNS resolution), caps the body and
times out. No network beyond loopback: DNS answers come from an injected resolver, and
the loopback servers record that nothing reached them."""

from __future__ import annotations

import http.client
import io
import shutil
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer

import pytest
from api_stub import Context, body_of, leaks, stub_handler
from PIL import Image

from busi_classifier.serving import remote_image
from busi_classifier.serving.api import MAX_IMAGE_BYTES
from busi_classifier.serving.remote_image import (
    UNREACHABLE,
    RemoteImageError,
    Response,
    UrlPolicy,
    fetch_image,
    is_public_address,
    open_https,
)

PUBLIC_IP = "93.184.216.34"


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (40, 30), 100).save(buffer, "PNG")
    return buffer.getvalue()


PNG = png_bytes()


class FakeWeb:
    """Injected DNS and HTTPS: ``dns`` maps host -> addresses, ``pages`` maps
    (host, path) -> (status, headers, body). Records every lookup and connection."""

    def __init__(self):
        self.dns: dict[str, list[str]] = {"images.example.org": [PUBLIC_IP]}
        self.pages: dict[tuple[str, str], tuple[int, dict, bytes]] = {
            ("images.example.org", "/scan.png"): (200, {"content-type": "image/png"}, PNG)}
        self.lookups: list[str] = []
        self.connections: list[tuple[str, str, str]] = []

    def resolve(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        if host not in self.dns:
            raise OSError("Name or service not known")
        return self.dns[host]

    def connect(self, address: str, host: str, port: int, target: str, timeout: float) -> Response:
        self.connections.append((address, host, target))
        status, headers, body = self.pages.get((host, target), (404, {}, b"not found"))
        stream = io.BytesIO(body)
        return Response(status, {k.lower(): v for k, v in headers.items()}, stream.read)


@pytest.fixture
def web(monkeypatch):
    fake = FakeWeb()
    monkeypatch.setattr(remote_image, "resolve_host", fake.resolve)
    monkeypatch.setattr(remote_image, "open_https", fake.connect)
    return fake


@pytest.fixture
def allow(monkeypatch):
    def set_allowlist(value: str, timeout: str | None = None):
        monkeypatch.setenv("IMAGE_URL_ALLOWLIST", value)
        if timeout:
            monkeypatch.setenv("IMAGE_URL_TIMEOUT_S", timeout)

    monkeypatch.delenv("IMAGE_URL_TIMEOUT_S", raising=False)
    return set_allowlist


def ask(url: str) -> dict:
    return stub_handler()({"url": url}, Context())


def error_code(answer: dict) -> str | None:
    return answer.get("error", {}).get("code")


class LoopbackServer:
    """A plain-HTTP server on 127.0.0.1 serving a PNG; counts what reaches it."""

    def __init__(self):
        self.hits = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(PNG)))
                self.end_headers()
                self.wfile.write(PNG)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def loopback():
    server = LoopbackServer()
    yield server
    server.close()


# --------------------------------------------------------------------------- off by default


def test_url_input_is_off_without_an_allowlist(monkeypatch, loopback):
    monkeypatch.delenv("IMAGE_URL_ALLOWLIST", raising=False)
    for url in (f"http://127.0.0.1:{loopback.port}/scan.png", "https://images.example.org/scan.png"):
        answer = ask(url)
        assert error_code(answer) == "url_not_allowed" and "off" in answer["error"]["message"]
    assert loopback.hits == []


def test_an_allowed_https_url_gives_a_prediction(web, allow):
    allow("images.example.org")
    answer = ask("https://images.example.org/scan.png")
    assert answer["prediction"] in ("normal", "benign", "malignant"), answer
    assert web.connections == [(PUBLIC_IP, "images.example.org", "/scan.png")]


def test_url_through_api_gateway_json_body(web, allow):
    from busi_classifier.serving.events import rest_v1_event

    allow("*.example.org")
    answer = stub_handler()(rest_v1_event("POST", "/predict", {"url": "https://images.example.org/scan.png"}), Context())
    assert answer["statusCode"] == 200 and "prediction" in body_of(answer)


# --------------------------------------------------------------------------- refused URLs


def test_the_loopback_http_server_is_never_reached(allow, loopback):
    """Even with every host allowed, plain http, a loopback address or another port is
    refused before any connection."""
    allow("*")
    for url in (f"http://127.0.0.1:{loopback.port}/scan.png",
                f"https://127.0.0.1:{loopback.port}/scan.png",
                "https://127.0.0.1/scan.png",
                "https://[::1]/scan.png",
                "https://0x7f000001/scan.png",
                "https://2130706433/scan.png"):  # 127.0.0.1 written as one number
        assert error_code(ask(url)) == "url_not_allowed", url
    assert error_code(ask("https://localhost/scan.png")) == "url_fetch_failed"  # resolves to 127.0.0.1
    assert loopback.hits == []


@pytest.mark.parametrize("url,why", [
    ("http://images.example.org/scan.png", "https"),
    ("ftp://images.example.org/scan.png", "https"),
    ("file:///etc/passwd", "https"),
    ("gopher://images.example.org/", "https"),
    ("data:image/png;base64,iVBORw0KGgo=", "https"),
    ("https://user:pass@images.example.org/scan.png", "user:password"),
    ("https://images.example.org:8443/scan.png", "443"),
    ("https://evil.example.com/scan.png", "allowlist"),
    ("https://images.example.org.evil.com/scan.png", "allowlist"),
    ("https:///scan.png", "no host"),
    ("https://images.example.org:99999/scan.png", "not a valid URL"),
])
def test_refused_urls(web, allow, url, why):
    allow("images.example.org")
    answer = ask(url)
    assert error_code(answer) == "url_not_allowed" and why in answer["error"]["message"], answer
    assert web.connections == []


def test_allowlist_patterns():
    allowed = ("images.example.org", "*.cdn.example.net")
    assert remote_image.host_allowed("images.example.org", allowed)
    assert remote_image.host_allowed("IMAGES.example.org.", allowed)
    assert remote_image.host_allowed("a.cdn.example.net", allowed)
    assert remote_image.host_allowed("a.b.cdn.example.net", allowed)
    assert not remote_image.host_allowed("cdn.example.net", allowed)
    assert not remote_image.host_allowed("evilcdn.example.net", allowed)
    assert not remote_image.host_allowed("example.org", allowed)
    assert not remote_image.host_allowed("images.example.org.evil.com", allowed)
    assert remote_image.host_allowed("anything.example", ("*",))


BLOCKED_ADDRESSES = [
    "127.0.0.1", "127.8.9.10", "10.0.0.5", "172.16.3.4", "192.168.1.1", "169.254.169.254", "169.254.170.2",
    "100.64.0.1", "0.0.0.0", "255.255.255.255", "224.0.0.1", "198.18.0.1", "192.0.2.10", "240.0.0.1",
    "::1", "::", "fe80::1", "fd00::1", "fc00::7", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.1.2.3",
    "2002:a9fe:a9fe::1",  # 6to4 around 169.254.169.254
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo around 10.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 around 169.254.169.254
    "fe80::1%eth0", "not-an-address",
]


@pytest.mark.parametrize("address", BLOCKED_ADDRESSES)
def test_private_loopback_link_local_addresses_are_refused(web, allow, address):
    allow("images.example.org")
    web.dns["images.example.org"] = [address]
    answer = ask("https://images.example.org/scan.png")
    # the same answer as a host that does not resolve: no oracle on internal DNS
    assert answer["error"] == {"code": "url_fetch_failed", "message": UNREACHABLE}
    assert web.connections == []


@pytest.mark.parametrize("address", [PUBLIC_IP, "8.8.8.8", "2606:4700:4700::1111", "::ffff:93.184.216.34"])
def test_public_addresses_pass(address):
    assert is_public_address(address)


def test_one_private_address_among_public_ones_is_enough_to_refuse(web, allow):
    allow("images.example.org")
    web.dns["images.example.org"] = [PUBLIC_IP, "10.0.0.7"]
    assert error_code(ask("https://images.example.org/scan.png")) == "url_fetch_failed"
    assert web.connections == []


def test_the_connection_goes_to_the_checked_address(web, allow, monkeypatch):
    """DNS rebinding: a second lookup could answer 127.0.0.1; there is no second lookup,
    the connection is made to the address that was checked."""
    answers = iter([[PUBLIC_IP], ["127.0.0.1"]])
    monkeypatch.setattr(remote_image, "resolve_host", lambda host, port: web.lookups.append(host) or next(answers))
    allow("images.example.org")
    assert "prediction" in ask("https://images.example.org/scan.png")
    assert web.lookups == ["images.example.org"]
    assert [c[0] for c in web.connections] == [PUBLIC_IP]


# --------------------------------------------------------------------------- redirects


def redirect(web, path: str, location: str, status: int = 302):
    web.pages[("images.example.org", path)] = (status, {"Location": location}, b"")


@pytest.mark.parametrize("location,code", [
    ("http://images.example.org/scan.png", "url_not_allowed"),  # downgrade to http
    ("https://metadata.example.org/latest/meta-data/", "url_fetch_failed"),  # resolves to 169.254.169.254
    ("https://127.0.0.1/scan.png", "url_not_allowed"),
    ("https://other.example.com/scan.png", "url_not_allowed"),  # off the allowlist
    ("https://[::1/x", "url_fetch_failed"),  # not a URL (was a 500)
    ("https://images.example.org:99999/x.png", "url_fetch_failed"),
    ("https://images.example.org/a\x00b.png", "url_fetch_failed"),
])
def test_redirects_are_checked_like_the_first_url(web, allow, location, code):
    allow("images.example.org,metadata.example.org")
    web.dns["metadata.example.org"] = ["169.254.169.254"]
    redirect(web, "/moved.png", location)
    answer = ask("https://images.example.org/moved.png")
    assert error_code(answer) == code, answer
    assert leaks(answer["error"]["message"]) == [] and "::1" not in answer["error"]["message"]
    assert [c[2] for c in web.connections] == ["/moved.png"]  # nothing after the redirect


def test_relative_redirect_is_followed(web, allow):
    allow("images.example.org")
    redirect(web, "/old.png", "/scan.png", 301)
    assert "prediction" in ask("https://images.example.org/old.png")
    assert [c[2] for c in web.connections] == ["/old.png", "/scan.png"]


def test_redirect_loop_stops(web, allow):
    allow("images.example.org")
    redirect(web, "/loop.png", "/loop.png")
    answer = ask("https://images.example.org/loop.png")
    assert error_code(answer) == "url_fetch_failed" and "redirected more than 3" in answer["error"]["message"]
    assert len(web.connections) == 4


# --------------------------------------------------------------------------- fetch failures


def test_http_error_status(web, allow):
    allow("images.example.org")
    answer = ask("https://images.example.org/missing.png")
    assert error_code(answer) == "url_fetch_failed" and answer["error"]["message"] == "the url did not answer 200 OK"


def test_unresolvable_host(web, allow):
    allow("*.example.org")
    answer = ask("https://nowhere.example.org/scan.png")
    assert answer["error"] == {"code": "url_fetch_failed", "message": UNREACHABLE}


@pytest.mark.parametrize("failure", [
    OSError("Name or service not known"), ConnectionRefusedError(111, "Connection refused"),
    OSError(113, "No route to host"), http.client.RemoteDisconnected("Remote end closed connection"),
], ids=["os-error", "refused", "no-route", "disconnected"])
def test_every_connect_failure_gives_the_one_dns_answer(web, allow, monkeypatch, failure):
    """Unresolvable, private address, refused connection: one answer, no class names."""
    allow("*.example.org")

    def connect(*args):
        raise failure

    monkeypatch.setattr(remote_image, "open_https", connect)
    answer = ask("https://images.example.org/scan.png")
    assert answer["error"] == {"code": "url_fetch_failed", "message": UNREACHABLE}


@pytest.mark.parametrize("url", [
    "https://localhost\u0000.example.org/x.png",  # NUL: passed the allowlist, resolved "localhost"
    "https://a_b.example.org/x.png",
    "https://a%00b.example.org/x.png",
    "https://-a.example.org/x.png",
    "https://a..example.org/x.png",
    "https://a.example.org\u3002evil.com/x.png",  # an ideographic full stop
    "https://" + "a" * 64 + ".example.org/x.png",
])
def test_host_names_are_letters_digits_hyphens_and_dots(web, allow, url):
    allow("*.example.org")
    answer = ask(url)
    assert error_code(answer) == "url_not_allowed", answer
    assert web.lookups == [] and web.connections == []


def test_international_host_names_are_idna_encoded_first(web, allow):
    allow("*.example.org")
    web.dns["xn--bcher-kva.example.org"] = [PUBLIC_IP]
    web.pages[("xn--bcher-kva.example.org", "/scan.png")] = (200, {}, PNG)
    assert "prediction" in ask("https://b\u00fccher.example.org/scan.png")
    assert web.lookups == ["xn--bcher-kva.example.org"]


def test_non_ascii_content_length_is_ignored_not_a_crash(web, allow):
    allow("images.example.org")
    web.pages[("images.example.org", "/odd.png")] = (200, {"Content-Length": "\u00b2"}, PNG)
    assert "prediction" in ask("https://images.example.org/odd.png")


def test_declared_body_over_the_cap_is_refused_unread(web, allow):
    allow("images.example.org")
    read = []
    web.pages[("images.example.org", "/huge.png")] = (200, {"Content-Length": str(MAX_IMAGE_BYTES + 1)}, b"")
    original = web.connect

    def connect(*args):
        response = original(*args)
        response.read = lambda n: read.append(n) or b""
        return response

    web.connect = connect
    remote_image.open_https = connect  # the fixture patched it; follow the new one
    answer = ask("https://images.example.org/huge.png")
    assert answer["error"]["code"] == "payload_too_large" and str(MAX_IMAGE_BYTES) in answer["error"]["message"]
    assert read == []


def test_streamed_body_over_the_cap_is_cut(web, allow):
    allow("images.example.org")
    web.pages[("images.example.org", "/stream.png")] = (200, {}, b"\0" * (MAX_IMAGE_BYTES + 10))
    answer = ask("https://images.example.org/stream.png")
    assert answer["error"]["code"] == "payload_too_large"


def test_a_slow_server_times_out(web, allow, monkeypatch):
    allow("images.example.org", timeout="0.3")

    def connect(address, host, port, target, timeout):
        assert timeout <= 0.3
        return Response(200, {}, lambda n: time.sleep(0.1) or b"x")  # never ends

    monkeypatch.setattr(remote_image, "open_https", connect)
    answer = ask("https://images.example.org/slow.png")
    assert error_code(answer) == "url_fetch_failed" and "timed out" in answer["error"]["message"]


def test_connect_timeout(web, allow, monkeypatch):
    allow("images.example.org")

    def connect(*args):
        raise TimeoutError("timed out")

    monkeypatch.setattr(remote_image, "open_https", connect)
    answer = ask("https://images.example.org/scan.png")
    assert error_code(answer) == "url_fetch_failed" and "timed out" in answer["error"]["message"]


def test_unreadable_image_at_the_url(web, allow):
    allow("images.example.org")
    web.pages[("images.example.org", "/page.html")] = (200, {"Content-Type": "text/html"}, b"<html></html>")
    assert error_code(ask("https://images.example.org/page.html")) == "invalid_image"


# --------------------------------------------------------------------------- real TLS on loopback


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """An HTTPS server on 127.0.0.1 with a self-signed certificate for "localhost"."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            hits.append((self.path, self.headers.get("Host")))
            self.send_response(200)
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield httpd.server_address[1], cert, hits
    httpd.shutdown()
    httpd.server_close()


def test_pinned_https_connection_verifies_the_host_name(tls_server):
    port, cert, hits = tls_server
    trusting = ssl.create_default_context(cafile=str(cert))
    response = remote_image.open_https("127.0.0.1", "localhost", port, "/scan.png", 5, context=trusting)
    try:
        assert response.status == 200 and response.read(1 << 20) == PNG
    finally:
        response.close()
    assert hits[-1][0] == "/scan.png" and hits[-1][1].startswith("localhost")
    with pytest.raises(ssl.SSLCertVerificationError):  # the certificate is not for this name
        remote_image.open_https("127.0.0.1", "images.example.org", port, "/scan.png", 5, context=trusting)
    with pytest.raises(ssl.SSLCertVerificationError):  # not a trusted certificate
        remote_image.open_https("127.0.0.1", "localhost", port, "/scan.png", 5)


def test_the_tls_server_on_loopback_is_refused_by_fetch(tls_server):
    port, cert, hits = tls_server
    before = len(hits)
    policy = UrlPolicy(("localhost",), MAX_IMAGE_BYTES)
    with pytest.raises(RemoteImageError) as refused:
        fetch_image("https://localhost/scan.png", policy, resolve=lambda host, p: ["127.0.0.1"])
    assert refused.value.code == "url_fetch_failed" and refused.value.message == UNREACHABLE
    assert len(hits) == before


# --------------------------------------------------------------------------- a real deadline


class TricklingServer:
    """A raw TCP server on 127.0.0.1 that sends ``prefix`` at once, then ``trickle`` one
    byte every ``interval`` seconds (at most ``limit`` bytes, so the loop is bounded),
    and records when the client went away."""

    def __init__(self, prefix: bytes, trickle: bytes, interval: float = 0.2, limit: int = 40):
        self.prefix, self.trickle, self.interval, self.limit = prefix, trickle, interval, limit
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        self.listener.settimeout(10)
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        with client:
            client.recv(4096)  # the request
            try:
                client.sendall(self.prefix)
                for byte in self.trickle[: self.limit]:
                    time.sleep(self.interval)
                    client.sendall(bytes([byte]))
                    self.sent += 1
            except OSError:
                pass  # the client hung up: what the deadline is for

    def close(self):
        self.listener.close()
        self.thread.join(timeout=15)


def fetch_from(server: TricklingServer, timeout_s: float) -> RemoteImageError:
    """fetch_image through the real socket code (plain HTTP to the loopback server; the
    address check sees a public address, the connection goes to the server)."""
    policy = UrlPolicy(("images.example.org",), MAX_IMAGE_BYTES, timeout_s)

    def connect(address, host, port, target, timeout):
        return open_https("127.0.0.1", host, server.port, target, timeout, tls=False)

    start = time.monotonic()
    with pytest.raises(RemoteImageError) as caught:
        fetch_image("https://images.example.org/slow.png", policy, resolve=lambda h, p: [PUBLIC_IP], connect=connect)
    elapsed = time.monotonic() - start
    assert elapsed < timeout_s + 0.5, f"the fetch took {elapsed:.1f} s for a {timeout_s} s deadline"
    return caught.value


@pytest.mark.parametrize("case", ["content-length-body", "headers", "chunked-body", "status-line"])
def test_a_trickling_server_is_cut_at_the_deadline(case):
    """Old code: the deadline was checked between 64 KB reads only, so one byte every
    0.2 s held the fetch until the server stopped (here 8 s; in the wild, forever)."""
    head = b"HTTP/1.1 200 OK\r\n"
    prefix, trickle = {
        "content-length-body": (head + b"Content-Length: 100000\r\n\r\n", b"x" * 40),
        "headers": (head, b"X-Slow: " + b"y" * 40),
        "chunked-body": (head + b"Transfer-Encoding: chunked\r\n\r\n186a0\r\n", b"z" * 40),
        "status-line": (b"", b"HTTP/1.1 200 OK\r\n" * 3),
    }[case]
    server = TricklingServer(prefix, trickle)
    try:
        error = fetch_from(server, 1.0)
    finally:
        server.close()
    assert error.code == "url_fetch_failed" and "timed out after 1 s" in error.message, error.message
    assert server.sent < 10  # it stopped listening at the deadline


def test_a_short_body_is_a_failed_read_without_class_names():
    server = TricklingServer(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10, b"", limit=0)
    try:
        error = fetch_from(server, 3.0)
    finally:
        server.close()
    assert error.code == "url_fetch_failed" and error.message == remote_image.READ_FAILED
    assert "Incomplete" not in error.message and "10 bytes of a Content-Length of 1000" in error.detail
