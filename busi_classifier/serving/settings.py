"""ServingSettings: the one reader of the environment for serving.

``ServingSettings.from_env()`` reads every variable once, at init, and validates it. A bad
value never raises: it is recorded in ``errors`` (and the setting keeps its default), the
handler logs the reasons once and answers every request 503 ``model_unavailable``. Nothing
in the serving code reads ``os.environ`` after that: the settings are passed down.

| variable | default | accepted |
|---|---|---|
| MODEL_PATH | ``default_model`` (lambda_function: model/ beside it) | a model folder or one .tflite file |
| MODEL_VARIANT | model.json's default_variant | a variant name of model.json; for a folder only |
| NUM_THREADS | the CPUs this process may use | an integer 1..256 |
| LOG_LEVEL | INFO | DEBUG, INFO, WARNING, ERROR (any case) |
| SERVICE_NAME | AWS_LAMBDA_FUNCTION_NAME, else busi-classifier | 1..256 printable characters |
| EMF_METRICS | on | on/off, true/false, 1/0, yes/no |
| METRICS_NAMESPACE | BusiClassifier | 1..256 characters of ``[A-Za-z0-9 ._/#:-]`` |
| IMAGE_URL_ALLOWLIST | empty: the url input is off | comma-separated ``host``, ``*.domain`` or ``*`` |
| IMAGE_URL_TIMEOUT_S | 5 | a number of seconds, 0.1..25 |
| IMAGE_URL_MAX_BYTES | the image cap (4,400,000) | an integer 1..4,400,000 |
| CORS_ALLOW_ORIGIN | ``*`` | an origin or ``*``; empty: no CORS header |
| RESULTS_BUCKET | empty: each S3 Batch task's own bucket | an S3 bucket name (3..63 of ``a-z 0-9 . -``) |
| RESULTS_PREFIX | ``busi-results/`` | an S3 key prefix ending in ``/``, 1..512 printable characters, no leading ``/`` |
| OOD_ACTION | ``flag`` | ``flag`` or ``refuse`` (any case) |

OOD_ACTION is what the API does with an image the input check flags (not like the
training images; a model whose model.json has an input_check): ``flag`` answers as usual,
with ``input_check.in_distribution`` false; ``refuse`` answers 422 ``out_of_distribution``
instead of a class (docs/api.md says why ``flag`` is the default).

RESULTS_* apply to S3 Batch Operations invocations only (s3_batch.py): results go to
``s3://RESULTS_BUCKET/RESULTS_PREFIX{model_version}/{etag}.json``. The endpoint, region and
credentials of the S3 client are boto3's own (AWS_REGION, AWS_ENDPOINT_URL_S3, ...).

Standard library only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
TRUE_WORDS = ("on", "true", "1", "yes")
FALSE_WORDS = ("off", "false", "0", "no")
DEFAULT_SERVICE = "busi-classifier"
DEFAULT_NAMESPACE = "BusiClassifier"
DEFAULT_URL_TIMEOUT_S = 5.0
MAX_URL_TIMEOUT_S = 25.0  # under the function's 28 s timeout (template.yaml)
MAX_IMAGE_BYTES = 4_400_000  # the request image cap (api.MAX_IMAGE_BYTES says why)
MAX_THREADS = 256
_HOST_PATTERN = re.compile(r"^(\*|(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*)$")
_NAMESPACE = re.compile(r"^[A-Za-z0-9 ._/#:-]{1,256}$")
_VARIANT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
DEFAULT_RESULTS_PREFIX = "busi-results/"
MAX_RESULTS_PREFIX = 512
OOD_ACTIONS = ("flag", "refuse")  # what a flagged image gets: the answer with in_distribution false, or a 422
DEFAULT_OOD_ACTION = "flag"


@dataclass(frozen=True)
class ServingSettings:
    """Everything the serving code may configure; built once per process."""

    model_path: Path
    model_variant: str | None = None
    num_threads: int | None = None  # None: the CPUs this process may use
    log_level: str = "INFO"
    service_name: str = DEFAULT_SERVICE
    emf_metrics: bool = True
    metrics_namespace: str = DEFAULT_NAMESPACE
    url_allowlist: tuple[str, ...] = ()
    url_timeout_s: float = DEFAULT_URL_TIMEOUT_S
    url_max_bytes: int = MAX_IMAGE_BYTES
    cors_allow_origin: str = "*"
    results_bucket: str | None = None  # None: each S3 Batch task's own bucket
    results_prefix: str = DEFAULT_RESULTS_PREFIX
    ood_action: str = DEFAULT_OOD_ACTION  # "flag" or "refuse": what an image the input check flags gets
    log_format: str = "json"  # "json" (Lambda, CloudWatch) or "text" (the local server's console)
    errors: tuple[str, ...] = field(default=())  # one sentence per invalid variable

    @property
    def url_input_enabled(self) -> bool:
        return bool(self.url_allowlist)

    def with_model(self, model_path: str | os.PathLike) -> ServingSettings:
        """The same settings serving ``model_path``: a path given is the path used, so a
        .tflite file drops MODEL_VARIANT (which names a variant of a folder)."""
        path = Path(model_path)
        return replace(self, model_path=path, model_variant=None if path.suffix == ".tflite" else self.model_variant)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 default_model: str | os.PathLike = "model") -> ServingSettings:
        """Settings from ``environ`` (default ``os.environ``); never raises."""
        env = os.environ if environ is None else environ
        errors: list[str] = []

        def get(name: str) -> str:
            return str(env.get(name) or "").strip()

        def bad(name: str, value: str, expected: str) -> None:
            errors.append(f"{name}={value[:64]!r} is not valid: expected {expected}")

        values: dict = {"model_path": Path(get("MODEL_PATH") or default_model)}

        variant = get("MODEL_VARIANT")
        if variant:
            if _VARIANT.match(variant):
                values["model_variant"] = variant
            else:
                bad("MODEL_VARIANT", variant, "a variant name of model.json such as int8_dynamic")

        threads = get("NUM_THREADS")
        if threads:
            if threads.isascii() and threads.isdigit() and 1 <= int(threads) <= MAX_THREADS:
                values["num_threads"] = int(threads)
            else:
                bad("NUM_THREADS", threads, f"an integer from 1 to {MAX_THREADS}")

        level = get("LOG_LEVEL")
        if level:
            if level.upper() in LEVELS:
                values["log_level"] = level.upper()
            else:
                bad("LOG_LEVEL", level, "one of " + ", ".join(LEVELS))

        service = get("SERVICE_NAME") or get("AWS_LAMBDA_FUNCTION_NAME")
        if service:
            if service.isprintable() and len(service) <= 256:
                values["service_name"] = service
            else:
                bad("SERVICE_NAME", service, "1 to 256 printable characters")

        metrics = get("EMF_METRICS").lower()
        if metrics:
            if metrics in TRUE_WORDS + FALSE_WORDS:
                values["emf_metrics"] = metrics in TRUE_WORDS
            else:
                bad("EMF_METRICS", metrics, "on or off")

        namespace = get("METRICS_NAMESPACE")
        if namespace:
            if _NAMESPACE.match(namespace):
                values["metrics_namespace"] = namespace
            else:
                bad("METRICS_NAMESPACE", namespace, "1 to 256 letters, digits or . _ / # : - and spaces")

        allowlist = get("IMAGE_URL_ALLOWLIST")
        patterns = tuple(p.strip().lower().rstrip(".") for p in allowlist.split(",") if p.strip())
        wrong = [p for p in patterns if not _HOST_PATTERN.match(p)]
        if wrong:
            bad("IMAGE_URL_ALLOWLIST", allowlist, f"host names, *.domain or * separated by commas ({wrong[0]!r})")
        else:
            values["url_allowlist"] = patterns

        timeout = get("IMAGE_URL_TIMEOUT_S")
        if timeout:
            try:
                seconds = float(timeout)
            except ValueError:
                seconds = -1.0
            if 0.1 <= seconds <= MAX_URL_TIMEOUT_S:  # also False for nan
                values["url_timeout_s"] = seconds
            else:
                bad("IMAGE_URL_TIMEOUT_S", timeout, f"seconds from 0.1 to {MAX_URL_TIMEOUT_S:g}")

        cap = get("IMAGE_URL_MAX_BYTES")
        if cap:
            if cap.isascii() and cap.isdigit() and 1 <= int(cap) <= MAX_IMAGE_BYTES:
                values["url_max_bytes"] = int(cap)
            else:
                bad("IMAGE_URL_MAX_BYTES", cap, f"an integer from 1 to {MAX_IMAGE_BYTES}")

        if "CORS_ALLOW_ORIGIN" in env:  # set but empty: no CORS header at all
            origin = get("CORS_ALLOW_ORIGIN")
            if origin.isprintable() and len(origin) <= 1024:
                values["cors_allow_origin"] = origin
            else:
                bad("CORS_ALLOW_ORIGIN", origin, "an origin such as https://example.org, or *")

        bucket = get("RESULTS_BUCKET")
        if bucket:
            if _BUCKET.match(bucket) and ".." not in bucket:
                values["results_bucket"] = bucket
            else:
                bad("RESULTS_BUCKET", bucket, "an S3 bucket name (3 to 63 lowercase letters, digits, . or -)")

        prefix = get("RESULTS_PREFIX")
        if prefix:
            if (prefix.isprintable() and len(prefix) <= MAX_RESULTS_PREFIX and prefix.endswith("/")
                    and not prefix.startswith("/")):
                values["results_prefix"] = prefix
            else:
                bad("RESULTS_PREFIX", prefix, f"a key prefix ending in / such as {DEFAULT_RESULTS_PREFIX} "
                                              f"(at most {MAX_RESULTS_PREFIX} printable characters, no leading /)")

        action = get("OOD_ACTION")
        if action:
            if action.lower() in OOD_ACTIONS:
                values["ood_action"] = action.lower()
            else:
                bad("OOD_ACTION", action, "flag (answer, with input_check.in_distribution false) or refuse (answer "
                                          "422 out_of_distribution)")

        return cls(**values, errors=tuple(errors))
