"""Structured JSON log lines and CloudWatch embedded-metric-format (EMF) lines.

Standard library only (json, os, sys, time, all loaded by the interpreter anyway): no
metrics SDK, nothing that adds to a cold start. Every line is one JSON object written to
stdout, which Lambda sends to CloudWatch Logs as one log event; CloudWatch turns the EMF
lines (those with an ``_aws`` key) into metrics without any API call.

Configured by a ``Telemetry`` built once from the settings (settings.py reads LOG_LEVEL,
EMF_METRICS, METRICS_NAMESPACE, SERVICE_NAME): nothing here reads the environment. The
local server uses the "text" format: readable lines on stderr, no request records and no
metrics (its own one line per request says what happened).

Request logs never hold image bytes or base64: only sizes, codes and the prediction.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}
DEFAULT_NAMESPACE = "BusiClassifier"
DEFAULT_SERVICE = "busi-classifier"
MAX_FIELD_CHARS = 2000  # long strings (tracebacks, messages) are cut in logs


def write_line(record: dict, stream=None) -> None:
    """One JSON object, one line, to ``stream`` (stdout by default)."""
    stream = stream if stream is not None else sys.stdout
    stream.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
    stream.flush()


def _clip(value):
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        return value[:MAX_FIELD_CHARS] + "...(cut)"
    return value


def request_metrics(route: str, status: int, latency_ms: float, predictions: list[str],
                    error_code: str | None, request_id: str | None = None,
                    namespace: str = DEFAULT_NAMESPACE, service: str = DEFAULT_SERVICE) -> list[dict]:
    """EMF records for one request.

    * one record with ``Latency`` (milliseconds) by Service and Route, ``Errors``
      (count) by Service and ErrorCode when the request failed, and ``Predictions``
      (count) by Service and PredictedClass when it predicted one class (a batch of 16
      benign images counts 16);
    * a batch whose images got several classes: one more record per class.

    ``route`` must come from a fixed vocabulary (/predict, /health, direct, other),
    never from the raw request path: a dimension value per attacker-chosen path would
    create unbounded metrics.
    """
    timestamp = int(time.time() * 1000)
    directives = [{"Namespace": namespace, "Dimensions": [["Service", "Route"]],
                   "Metrics": [{"Name": "Latency", "Unit": "Milliseconds"}]}]
    first = {"Service": service, "Route": route, "Latency": round(latency_ms, 3), "StatusCode": status}
    if error_code:
        directives.append({"Namespace": namespace, "Dimensions": [["Service", "ErrorCode"]],
                           "Metrics": [{"Name": "Errors", "Unit": "Count"}]})
        first.update(ErrorCode=error_code, Errors=1)
    if request_id:
        first["request_id"] = request_id
    counts: dict[str, int] = {}
    for name in predictions:
        counts[name] = counts.get(name, 0) + 1
    if len(counts) == 1:  # the usual case: one line per request
        [(name, count)] = counts.items()
        directives.append({"Namespace": namespace, "Dimensions": [["Service", "PredictedClass"]],
                           "Metrics": [{"Name": "Predictions", "Unit": "Count"}]})
        first.update(PredictedClass=name, Predictions=count)
        counts = {}
    records = [{"_aws": {"Timestamp": timestamp, "CloudWatchMetrics": directives}, **first}]
    for name, count in counts.items():  # a batch with several classes: one more line each
        record = {
            "_aws": {"Timestamp": timestamp, "CloudWatchMetrics": [
                {"Namespace": namespace, "Dimensions": [["Service", "PredictedClass"]],
                 "Metrics": [{"Name": "Predictions", "Unit": "Count"}]}]},
            "Service": service, "PredictedClass": name, "Predictions": count,
        }
        if request_id:
            record["request_id"] = request_id
        records.append(record)
    return records


@dataclass(frozen=True)
class Telemetry:
    """Where and how the serving code logs: level, format, metrics (from the settings)."""

    level: str = "INFO"
    format: str = "json"  # "json": one JSON object per line on stdout; "text": readable lines on stderr
    metrics: bool = True
    namespace: str = DEFAULT_NAMESPACE
    service: str = DEFAULT_SERVICE

    def enabled(self, level: str) -> bool:
        return LEVELS.get(level, 20) >= LEVELS.get(self.level, 20)

    def log(self, level: str, message: str, **fields) -> None:
        """A structured log line: ``{"level", "message", ...fields}``."""
        if not self.enabled(level):
            return
        fields = {key: _clip(value) for key, value in fields.items() if value is not None}
        if self.format == "text":
            if message == "request":  # the local server prints its own line per request
                return
            details = " ".join(f"{key}={value}" for key, value in fields.items() if key != "traceback")
            sys.stderr.write(f"{level.lower()}: {message}" + (f" ({details})" if details else "") + "\n")
            if "traceback" in fields and self.enabled("DEBUG"):
                sys.stderr.write(str(fields["traceback"]))
            sys.stderr.flush()
            return
        write_line({"level": level, "logger": "busi_classifier", "message": message, **fields})

    def emit_request_metrics(self, route: str, status: int, latency_ms: float, predictions: list[str],
                             error_code: str | None, request_id: str | None = None) -> None:
        if not self.metrics or self.format != "json":
            return
        for record in request_metrics(route, status, latency_ms, predictions, error_code, request_id,
                                      self.namespace, self.service):
            write_line(record)
