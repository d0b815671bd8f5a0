"""Structured JSON log lines and CloudWatch embedded-metric-format (EMF) lines.

Standard library only (json, os, sys, time, all loaded by the interpreter anyway): no
metrics SDK, nothing that adds to a cold start. Every line is one JSON object written to
stdout, which Lambda sends to CloudWatch Logs as one log event; CloudWatch turns the EMF
lines (those with an ``_aws`` key) into metrics without any API call.

Environment:
  LOG_LEVEL          DEBUG, INFO (default), WARNING, ERROR
  EMF_METRICS        "off" turns the metric lines off (default on)
  METRICS_NAMESPACE  CloudWatch namespace of the metrics (default BusiClassifier)
  SERVICE_NAME       value of the Service dimension (default: AWS_LAMBDA_FUNCTION_NAME,
                     else busi-classifier)

Request logs never hold image bytes or base64: only sizes, codes and the prediction.
"""

from __future__ import annotations

import json
import os
import sys
import time

LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}
DEFAULT_NAMESPACE = "BusiClassifier"
MAX_FIELD_CHARS = 2000  # long strings (tracebacks, messages) are cut in logs


def _enabled(level: str) -> bool:
    wanted = LEVELS.get(os.environ.get("LOG_LEVEL", "INFO").upper(), 20)
    return LEVELS.get(level, 20) >= wanted


def write_line(record: dict, stream=None) -> None:
    """One JSON object, one line, to ``stream`` (stdout by default)."""
    stream = stream if stream is not None else sys.stdout
    stream.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
    stream.flush()


def _clip(value):
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        return value[:MAX_FIELD_CHARS] + "...(cut)"
    return value


def log(level: str, message: str, **fields) -> None:
    """A structured log line: ``{"level", "message", ...fields}``."""
    if not _enabled(level):
        return
    record = {"level": level, "logger": "busi_classifier", "message": message}
    record.update({key: _clip(value) for key, value in fields.items() if value is not None})
    write_line(record)


def service_name() -> str:
    return os.environ.get("SERVICE_NAME") or os.environ.get("AWS_LAMBDA_FUNCTION_NAME") or "busi-classifier"


def metrics_enabled() -> bool:
    return os.environ.get("EMF_METRICS", "on").strip().lower() not in ("off", "0", "false", "no")


def request_metrics(route: str, status: int, latency_ms: float, predictions: list[str],
                    error_code: str | None, request_id: str | None = None) -> list[dict]:
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
    namespace = os.environ.get("METRICS_NAMESPACE") or DEFAULT_NAMESPACE
    service = service_name()
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


def emit_request_metrics(*args, **kwargs) -> None:
    if not metrics_enabled():
        return
    for record in request_metrics(*args, **kwargs):
        write_line(record)
