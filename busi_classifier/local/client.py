"""Command-line client: send one ultrasound image to the classifier and print the answer.

Used through the top-level ``test.py`` (``python test.py IMAGE [options]``). Three ways
to reach the model:

* the local Lambda runtime interface emulator (default), i.e. the container started
  with ``docker run -p 9000:8080 IMAGE``;
* an API Gateway stage URL (``--endpoint https://.../prod``): POST to ``.../predict``;
  ``python -m busi_classifier serve`` answers there too (``--endpoint http://localhost:8000``);
* the API of a stack deployed from template.yaml (``--stack NAME``): its URL is read
  from the stack's ``ApiUrl`` output through boto3;
* a deployed Lambda function invoked directly through boto3 (``--function NAME``).

The request body is ``{"image": "<base64 of the file bytes>"}``, with ``"explain": true``
for ``--explain`` (the answer then carries the class activation map; its PNG overlay,
``explanation.overlay_png``, is written to ``--overlay-out`` or beside the image) and
``"segment": true`` for ``--segment`` (the answer then carries the ``lesion``: whether one
was found, its area and bounding box, printed on one line, and its outline, which
``--segment-out`` draws into a PNG copy of the image, upright);
Where the model checks its input and the image is flagged (the answer's
``input_check.in_distribution`` is false), a warning goes to stderr before the JSON;
``--api-key`` (or BUSI_API_KEY) adds the ``x-api-key`` header that an API deployed with
``ApiKeyRequired=true`` wants. Only the standard library is imported at module level;
boto3 is imported lazily when ``--function`` or ``--stack`` is used, Pillow when
``--segment-out`` is.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import os
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_ENDPOINT = "http://localhost:9000/2015-03-31/functions/function/invocations"
DEFAULT_TIMEOUT = 60.0
EMULATOR_PATH_MARKER = "/2015-03-31/functions/"
PREDICT_PATH = "/predict"
API_URL_OUTPUT = "ApiUrl"  # the output of template.yaml that holds the stage URL
API_KEY_ENV = "BUSI_API_KEY"
OVERLAY_SUFFIX = ".overlay.png"  # scan.png -> scan.overlay.png, the default --overlay-out
OUTLINE_COLOUR = (255, 48, 48)  # the lesion outline --segment-out draws
MASK_MAX_SIDE = 256  # the answer's mask_size: the image's size, or its longer side scaled to this (serving/lesion.py)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
USER_AGENT = "busi-classifier-client/0.1"

# A synchronous Lambda invocation accepts at most 6 MB of request payload (API Gateway
# 10 MB); base64 grows the image by a third. Larger payloads are still sent, with a
# warning, so that the server's own answer is shown.
LAMBDA_PAYLOAD_LIMIT = 6 * 1024 * 1024

DOCKER_HINT = "is the container running? docker run -p 9000:8080 IMAGE"


class ClientError(Exception):
    """A failure with a message meant for the user (printed without traceback)."""


class ErrorAnswer(Exception):
    """The server answered, but with an error; ``answer`` is printed as JSON."""

    def __init__(self, message: str, answer: Any):
        super().__init__(message)
        self.answer = answer


# --------------------------------------------------------------------------- image


def is_url(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme.lower() in ("http", "https")


def read_image(source: str, timeout: float = DEFAULT_TIMEOUT) -> bytes:
    """Bytes of a local image file, or of an http(s) URL downloaded with ``timeout``."""
    if is_url(source):
        data = _download(source, timeout)
    else:
        if "://" in source:
            scheme = source.split("://", 1)[0]
            raise ClientError(
                f"unsupported URL scheme {scheme!r} in {source}: use a local file "
                "or an http(s) URL"
            )
        path = Path(source).expanduser()
        if not path.exists():
            raise ClientError(f"image file not found: {source}")
        if path.is_dir():
            raise ClientError(f"image path is a directory, not a file: {source}")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ClientError(f"cannot read image file {source}: {exc.strerror or exc}") from None
    if not data:
        raise ClientError(f"image is empty (0 bytes): {source}")
    return data


def _download(url: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        raise ClientError(
            f"could not download image {url}: HTTP {exc.code} {exc.reason}"
        ) from None
    except TimeoutError:
        raise ClientError(f"could not download image {url}: timed out after {timeout:g} s") from None
    except urllib.error.URLError as exc:
        raise ClientError(f"could not download image {url}: {_reason(exc.reason, timeout)}") from None
    except (OSError, ValueError) as exc:
        raise ClientError(f"could not download image {url}: {exc}") from None


def build_payload(image_bytes: bytes, explain: bool = False, segment: bool = False) -> dict:
    """The request body the handler expects (``explain``: ask for the class activation map;
    ``segment``: for the lesion outline, area and mask)."""
    payload: dict[str, Any] = {"image": base64.b64encode(image_bytes).decode("ascii")}
    if explain:
        payload["explain"] = True
    if segment:
        payload["segment"] = True
    return payload


# --------------------------------------------------------------------------- explanation


def default_overlay_path(source: str) -> Path:
    """Where the overlay of ``source`` goes without --overlay-out: beside a local image
    (``scan.png`` -> ``scan.overlay.png``); for a URL, its file name in the current folder."""
    if is_url(source):
        stem = Path(urllib.parse.unquote(urllib.parse.urlsplit(source).path)).stem or "image"
        return Path(stem + OVERLAY_SUFFIX)
    path = Path(source).expanduser()
    return path.with_name(path.stem + OVERLAY_SUFFIX)


def overlay_bytes(answer: Any) -> bytes:
    """The PNG of the answer's ``explanation.overlay_png`` (base64); ClientError when the
    answer holds none or it is not a base64 PNG."""
    explanation = answer.get("explanation") if isinstance(answer, dict) else None
    encoded = explanation.get("overlay_png") if isinstance(explanation, dict) else None
    if not isinstance(encoded, str):
        raise ClientError('the answer holds no explanation.overlay_png (was "explain": true ignored? a server '
                          "from before the class maps does not send one)")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError("explanation.overlay_png in the answer is not base64") from None
    if not data.startswith(PNG_SIGNATURE):
        raise ClientError("explanation.overlay_png in the answer is not a PNG image")
    return data


def write_overlay(answer: Any, path: Path) -> Any:
    """Write the answer's overlay PNG to ``path``; return the answer with ``overlay_png``
    replaced by a note naming the file (what is printed: not 100 KB of base64)."""
    data = overlay_bytes(answer)
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise ClientError(f"cannot write the overlay to {path}: {exc.strerror or exc}") from None
    explanation = {**answer["explanation"], "overlay_png": f"written to {path} ({len(data)} bytes)"}
    return {**answer, "explanation": explanation}


# --------------------------------------------------------------------------- lesion


def lesion_of(answer: Any) -> dict:
    """The answer's ``lesion``; ClientError when it holds none or not one of the API's."""
    lesion = answer.get("lesion") if isinstance(answer, dict) else None
    if not isinstance(lesion, dict) or not isinstance(lesion.get("found"), bool):
        raise ClientError('the answer holds no lesion (was "segment": true ignored? a server from before the '
                          "lesion outline does not send one)")
    return lesion


def lesion_line(lesion: dict) -> str:
    """One line for the terminal: found or not, the area, the bounding box."""
    if not lesion["found"]:
        peak, threshold = lesion.get("peak_probability"), lesion.get("threshold")
        detail = (f" (peak probability {peak:.2f}, below the threshold {threshold:.2f})"
                  if isinstance(peak, (int, float)) and isinstance(threshold, (int, float)) else "")
        return f"lesion: no lesion found{detail}"
    area = lesion.get("area_fraction")
    regions = lesion.get("regions")
    parts = [f"{area * 100:.1f} % of the image" if isinstance(area, (int, float)) else "area unknown"]
    if isinstance(regions, int):
        parts.append(f"{regions} region{'s' if regions != 1 else ''}")
    bbox = lesion.get("bbox")
    if isinstance(bbox, list) and len(bbox) == 4:
        parts.append(f"largest in x {bbox[0]} to {bbox[2]}, y {bbox[1]} to {bbox[3]} (bbox {json.dumps(bbox)})")
    return "lesion: found, " + ", ".join(parts)


def upright_picture(image_bytes: bytes):
    """The image as RGB, upright (EXIF orientation applied), at its own size: what the
    lesion's coordinates are of. Pillow is imported here only."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(image_bytes))
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit gray: the API divides by 256 too
            image = image.convert("I").point(lambda v: v / 256).convert("L")
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))  # alpha composited on black, as the API does
            image = Image.alpha_composite(black, rgba)
        return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ClientError(f"cannot draw the outline: the image cannot be opened here ({exc})") from None


def expected_mask_size(width: int, height: int) -> list[int]:
    if max(width, height) <= MASK_MAX_SIDE:
        return [width, height]
    scale = MASK_MAX_SIDE / max(width, height)
    return [max(1, round(width * scale)), max(1, round(height * scale))]


def outline_png(image_bytes: bytes, lesion: dict) -> bytes:
    """PNG of the image, upright, with the lesion's outline drawn (the image alone when
    nothing was found). ClientError when the answer's outline does not fit the image."""
    from PIL import ImageDraw

    picture = upright_picture(image_bytes)
    width, height = picture.size
    mask_size = lesion.get("mask_size")
    if isinstance(mask_size, list) and mask_size != expected_mask_size(width, height):
        raise ClientError(f"the answer's lesion is of an image of another shape (mask {mask_size}) than this "
                          f"one upright ({width}x{height}): was the image changed?")
    outline = lesion.get("outline") or []
    points = [(float(x), float(y)) for x, y in outline]
    if len(points) >= 2:
        line = max(1, round(max(width, height) / 250))
        ImageDraw.Draw(picture).line(points + points[:1], fill=OUTLINE_COLOUR, width=line, joint="curve")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def write_outline(image_bytes: bytes, answer: Any, path: Path) -> int:
    """Write the image with the answer's lesion outline to ``path``; return its bytes."""
    data = outline_png(image_bytes, lesion_of(answer))
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise ClientError(f"cannot write the outline to {path}: {exc.strerror or exc}") from None
    return len(data)


# --------------------------------------------------------------------------- transport


def resolve_url(endpoint: str) -> str:
    """The URL to POST to.

    An emulator / Lambda invoke URL (containing ``/2015-03-31/functions/``) is used as
    is; anything else is an API Gateway stage or base URL and gets ``/predict``
    appended (unless it already ends with it).
    """
    endpoint = endpoint.strip()
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ClientError(f"endpoint must be an http(s) URL, got {endpoint!r}")
    if EMULATOR_PATH_MARKER in parts.path:
        return endpoint
    path = parts.path.rstrip("/")
    if not path.endswith(PREDICT_PATH):
        path += PREDICT_PATH
    return urllib.parse.urlunsplit(parts._replace(path=path))


def post_json(url: str, payload: dict, timeout: float = DEFAULT_TIMEOUT, api_key: str | None = None) -> Any:
    """POST ``payload`` as JSON and return the decoded JSON answer.

    Raises ``ErrorAnswer`` for an HTTP 4xx/5xx whose body is JSON (API Gateway error
    answers), ``ClientError`` for everything else that goes wrong.
    """
    data = json.dumps(payload).encode("utf-8")
    headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": USER_AGENT}
    if api_key:
        headers["x-api-key"] = api_key
    request = urllib.request.Request(url, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
            body = response.read()
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read()
        except OSError:
            body = b""
        try:
            answer = json.loads(body)
        except ValueError:
            raise ClientError(
                f"{url} answered HTTP {exc.code} {exc.reason}: {_snippet(body)}"
            ) from None
        raise ErrorAnswer(f"{url} answered HTTP {exc.code} {exc.reason}", answer) from None
    except TimeoutError:
        raise ClientError(
            f"request to {url} timed out after {timeout:g} s (raise it with --timeout)"
        ) from None
    except urllib.error.URLError as exc:
        raise ClientError(_unreachable_message(url, exc.reason, timeout)) from None
    except (ConnectionError, OSError) as exc:
        raise ClientError(_unreachable_message(url, exc, timeout)) from None
    return _decode_json(body, f"answer from {url} (HTTP {status})")


def invoke_function(
    name: str, payload: dict, region: str | None = None, timeout: float | None = None
) -> Any:
    """Invoke a deployed Lambda function synchronously through boto3."""
    try:
        import boto3  # lazy: only this path needs it
    except ImportError:
        raise ClientError(
            "--function needs boto3, which is not installed: pip install boto3"
        ) from None

    kwargs: dict[str, Any] = {"region_name": region}
    config = _botocore_config(timeout)
    if config is not None:
        kwargs["config"] = config
    try:
        client = boto3.client("lambda", **kwargs)
        response = client.invoke(
            FunctionName=name,
            InvocationType="RequestResponse",
            Payload=json.dumps(payload).encode("utf-8"),
        )
        raw = response["Payload"].read()
    except Exception as exc:  # botocore raises many unrelated classes; all end here
        raise ClientError(_boto_message(f"invoke function {name}", exc)) from None

    answer = _decode_json(raw, f"answer from function {name}")
    function_error = response.get("FunctionError")
    if function_error:
        raise ErrorAnswer(f"function {name} failed ({function_error})", answer)
    return answer


def stack_api_url(stack: str, region: str | None = None, timeout: float | None = None) -> str:
    """The API URL (the ``ApiUrl`` output) of a stack deployed from template.yaml."""
    try:
        import boto3  # lazy: only this path needs it
    except ImportError:
        raise ClientError("--stack needs boto3, which is not installed: pip install boto3") from None
    kwargs: dict[str, Any] = {"region_name": region}
    config = _botocore_config(timeout)
    if config is not None:
        kwargs["config"] = config
    try:
        response = boto3.client("cloudformation", **kwargs).describe_stacks(StackName=stack)
    except Exception as exc:  # botocore raises many unrelated classes; all end here
        raise ClientError(_boto_message(f"read stack {stack}", exc)) from None
    stacks = response.get("Stacks") or []
    if not stacks:
        raise ClientError(f"stack {stack} not found")
    outputs = {o.get("OutputKey"): o.get("OutputValue") for o in stacks[0].get("Outputs") or []}
    url = outputs.get(API_URL_OUTPUT)
    if not url:
        names = ", ".join(sorted(k for k in outputs if k)) or "none"
        raise ClientError(
            f"stack {stack} has no {API_URL_OUTPUT} output (its outputs: {names}); "
            "was it deployed from template.yaml?"
        )
    return url


def _botocore_config(timeout: float | None):
    if timeout is None:
        return None
    try:
        from botocore.config import Config
    except ImportError:
        return None
    return Config(connect_timeout=timeout, read_timeout=timeout)


def _boto_message(action: str, exc: Exception) -> str:
    kind = type(exc).__name__
    text = " ".join(str(exc).split()) or kind
    if kind == "NoCredentialsError":
        return (
            f"cannot {action}: no AWS credentials found "
            "(run `aws configure` or set AWS_PROFILE / AWS_ACCESS_KEY_ID)"
        )
    if kind == "NoRegionError":
        return f"cannot {action}: no AWS region set (use --region or AWS_DEFAULT_REGION)"
    return f"cannot {action}: {kind}: {text}"


# --------------------------------------------------------------------------- answers


def unwrap_response(obj: Any) -> Any:
    """The handler's answer, unwrapping an API-Gateway-shaped ``{statusCode, body}``."""
    if not (isinstance(obj, dict) and "statusCode" in obj and "body" in obj):
        return obj
    body = obj["body"]
    if isinstance(body, str):
        if obj.get("isBase64Encoded"):
            try:
                body = base64.b64decode(body).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                raise ClientError("answer body is marked base64 but is not decodable") from None
        body = _decode_json(body.encode("utf-8"), f"answer body (statusCode {obj['statusCode']})")
    return body


def is_prediction(answer: Any) -> bool:
    return isinstance(answer, dict) and "prediction" in answer and "error" not in answer


def input_check_warning(answer: Any) -> str | None:
    """The warning line for an answer whose input check flagged the image (None otherwise)."""
    check = answer.get("input_check") if isinstance(answer, dict) else None
    if not isinstance(check, dict) or check.get("in_distribution") is not False:
        return None
    score, threshold = check.get("score"), check.get("threshold")
    numbers = (f" (input check score {score:.1f}, above its threshold {threshold:.1f})"
               if isinstance(score, (int, float)) and isinstance(threshold, (int, float)) else
               " (input check score not a number)")
    return ("warning: this image does not look like the breast ultrasound images the model was trained on"
            f"{numbers}: its class is not to be trusted")


def summarize_error(answer: Any) -> str:
    """A one-line description of an error answer."""
    if isinstance(answer, dict):
        error = answer.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            message = error.get("message")
            return ": ".join(str(part) for part in (code, message) if part) or "error"
        if error:
            return str(error)
        if "errorMessage" in answer:  # unhandled exception reported by the Lambda runtime
            kind = answer.get("errorType")
            return f"{kind}: {answer['errorMessage']}" if kind else str(answer["errorMessage"])
        if "message" in answer:  # API Gateway's own errors, e.g. {"message": "Forbidden"}
            return str(answer["message"])
    return "the answer holds no prediction"


def _decode_json(raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise ClientError(f"{what} is not JSON: {_snippet(raw)}") from None


def _snippet(raw: bytes, limit: int = 200) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    text = " ".join(text.split())
    if not text:
        return "(empty body)"
    return text if len(text) <= limit else text[:limit] + "..."


def _reason(reason: Any, timeout: float) -> str:
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"timed out after {timeout:g} s"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason)


def _unreachable_message(url: str, reason: Any, timeout: float) -> str:
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"request to {url} timed out after {timeout:g} s (raise it with --timeout)"
    message = f"cannot reach {url}: {_reason(reason, timeout)}"
    if EMULATOR_PATH_MARKER in url:
        message += f" ({DOCKER_HINT})"
    elif isinstance(reason, ConnectionRefusedError):
        message += " (is the server running and the --endpoint URL right?)"
    return message


# --------------------------------------------------------------------------- CLI


EPILOG = f"""\
examples:
  # local container (Lambda runtime interface emulator on port 9000)
  docker run --rm -p 9000:8080 busi-classifier
  python test.py scan.png

  # an image from the web
  python test.py https://example.org/scan.png

  # through API Gateway (POSTs to <stage URL>/predict)
  python test.py scan.png --endpoint https://abc123.execute-api.eu-west-1.amazonaws.com/prod

  # the API of a stack deployed with `sam deploy` (URL from its ApiUrl output)
  python test.py scan.png --stack busi-classifier --region eu-west-1 [--api-key KEY]

  # the local HTTP server (python -m busi_classifier serve --port 8000)
  python test.py scan.png --endpoint http://localhost:8000

  # invoke the deployed function directly (needs boto3 and AWS credentials)
  python test.py scan.png --function busi-classifier --region eu-west-1

  # the class activation map too: its overlay PNG goes to scan.overlay.png
  python test.py scan.png --endpoint http://localhost:8000 --explain [--overlay-out map.png]

  # the lesion outline: found / area / bbox on one line, the image with its outline in outline.png
  python test.py scan.png --endpoint http://localhost:8000 --segment [--segment-out outline.png]

The answer is printed as JSON. Exit code 0 when it holds a prediction, 1 otherwise.
Default endpoint: {DEFAULT_ENDPOINT}
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="test.py",
        description=(
            "Send a breast-ultrasound image to the classifier (normal / benign /\n"
            'malignant) and print its answer. The image is sent as {"image": "<base64>"}\n'
            "to the local Lambda container (default), an API Gateway URL (--endpoint),\n"
            "the API of a deployed stack (--stack) or a deployed Lambda function (--function)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", help="path of a local image file, or an http(s) URL to download")
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--endpoint",
        default=DEFAULT_ENDPOINT,
        help="URL to POST to: a Lambda emulator URL (containing /2015-03-31/functions/) is "
        "used as is; any other URL is an API Gateway stage/base URL and gets /predict "
        "appended (default: %(default)s)",
    )
    target.add_argument(
        "--stack",
        metavar="NAME",
        help=f"POST to the API of this CloudFormation stack (deployed from template.yaml): "
        f"its URL is read from the stack's {API_URL_OUTPUT} output with boto3 (default: none, "
        "--endpoint is used)",
    )
    target.add_argument(
        "--function",
        metavar="NAME",
        help="invoke this deployed Lambda function (name or ARN) directly with boto3 "
        "instead of HTTP (default: none, --endpoint is used)",
    )
    parser.add_argument(
        "--region", help="AWS region for --function and --stack (default: from the AWS configuration)"
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help='ask for the class activation map ("explain": true) and write its overlay PNG '
        "(explanation.overlay_png) to --overlay-out; the printed answer names the file instead "
        "of the base64 (default: off)",
    )
    parser.add_argument(
        "--overlay-out",
        metavar="PATH",
        type=Path,
        help=f"where --explain writes the overlay PNG; implies --explain (default: beside the image, "
        f"scan.png -> scan{OVERLAY_SUFFIX}; for a URL, its file name in the current folder)",
    )
    parser.add_argument(
        "--segment",
        action="store_true",
        help='ask for the lesion outline ("segment": true): prints whether a lesion was found, its '
        "area and bounding box on one line (stderr; the answer's JSON on stdout as always) (default: off)",
    )
    parser.add_argument(
        "--segment-out",
        metavar="PATH",
        type=Path,
        help="write a PNG of the image, upright, with the lesion outline drawn in red; implies --segment "
        "(default: none, nothing is written)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        metavar="KEY",
        help=f"send this API key (x-api-key header) to an API deployed with ApiKeyRequired=true "
        f"(default: ${API_KEY_ENV})",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="network timeout for the download and the request (default: %(default)g)",
    )
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.expanduser().resolve() == b.expanduser().resolve()
    except OSError:
        return False


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    explain = args.explain or args.overlay_out is not None
    segment = args.segment or args.segment_out is not None
    overlay_path = (args.overlay_out or default_overlay_path(args.image)) if explain else None
    for flag, path in (("--overlay-out", overlay_path), ("--segment-out", args.segment_out)):
        if path is not None and not is_url(args.image) and _same_file(path, Path(args.image)):
            _error(f"{flag} {path} is the image itself; choose another file")
            return 2
    if overlay_path is not None and args.segment_out is not None and _same_file(overlay_path, args.segment_out):
        _error(f"--segment-out {args.segment_out} is where the overlay goes too; choose another file")
        return 2
    try:
        image_bytes = read_image(args.image, args.timeout)
        payload = build_payload(image_bytes, explain, segment)
        size = len(payload["image"])
        if size > LAMBDA_PAYLOAD_LIMIT:
            print(
                f"warning: the base64 image is {size / 2**20:.1f} MiB; Lambda accepts at "
                f"most 6 MB per request, the call will likely be refused",
                file=sys.stderr,
            )
        if args.function:
            raw = invoke_function(args.function, payload, args.region, args.timeout)
        else:
            endpoint = stack_api_url(args.stack, args.region, args.timeout) if args.stack else args.endpoint
            raw = post_json(resolve_url(endpoint), payload, args.timeout, args.api_key)
        answer = unwrap_response(raw)
        if overlay_path is not None and is_prediction(answer):
            try:
                answer = write_overlay(answer, overlay_path)
            except ClientError as exc:  # a prediction without a usable overlay: show it, then why
                _print_json(answer)
                _error(str(exc))
                return 1
            print(f"overlay written to {overlay_path}", file=sys.stderr)
        if segment and is_prediction(answer):
            try:
                lesion = lesion_of(answer)
                line = lesion_line(lesion)
                written = write_outline(image_bytes, answer, args.segment_out) if args.segment_out else None
            except ClientError as exc:  # a prediction without a usable lesion: show it, then why
                _print_json(answer)
                _error(str(exc))
                return 1
            print(line, file=sys.stderr)
            if written is not None:
                what = "with the outline" if lesion["found"] else "without an outline (no lesion found)"
                print(f"the image {what} written to {args.segment_out} ({written} bytes)", file=sys.stderr)
    except ErrorAnswer as exc:
        _print_json(exc.answer)
        _error(f"{exc}: {summarize_error(exc.answer)}")
        return 1
    except ClientError as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130

    warning = input_check_warning(answer) if is_prediction(answer) else None
    if warning:
        print(warning, file=sys.stderr)
    _print_json(answer)
    if is_prediction(answer):
        return 0
    _error(summarize_error(answer))
    return 1
