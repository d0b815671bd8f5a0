"""Builders for the Lambda event shapes the function accepts (API Gateway REST API
payload 1.0, HTTP API payload 2.0, direct invocation). Used by the demo, the tests, the
sample events in events/ and anyone who wants a realistic event without AWS.

The proxy events carry the fields API Gateway sends (as `sam local generate-event`
shows them): multi-value headers, request context with stage, request id and source IP.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

HOST = "abc123.execute-api.us-east-1.amazonaws.com"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def direct_event(image: bytes) -> dict:
    """Direct invocation / console test event / non-proxy integration."""
    return {"image": b64(image)}


def _body(json_body: dict | list | None, raw: bytes | None, content_type: str | None) -> tuple[str | None, bool, str]:
    if raw is not None:
        return b64(raw), True, content_type or "image/png"
    if json_body is not None:
        return json.dumps(json_body), False, content_type or "application/json"
    return None, False, content_type or "application/json"


def rest_v1_event(method: str, path: str, json_body: dict | list | None = None, raw: bytes | None = None,
                  stage: str = "prod", content_type: str | None = None) -> dict:
    """API Gateway REST API proxy integration event (payload format 1.0)."""
    body, is_b64, content_type = _body(json_body, raw, content_type)
    headers = {"Accept": "application/json", "Content-Type": content_type, "Host": HOST,
               "User-Agent": "curl/8.5.0", "X-Forwarded-For": "203.0.113.7", "X-Forwarded-Port": "443",
               "X-Forwarded-Proto": "https"}
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {key: [value] for key, value in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "resourceId": "a1b2c3",
            "resourcePath": path,
            "httpMethod": method,
            "path": f"/{stage}{path}",
            "stage": stage,
            "protocol": "HTTP/1.1",
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "requestTime": "23/Nov/2026:12:34:56 +0000",
            "requestTimeEpoch": 1795437296000,
            "identity": {"sourceIp": "203.0.113.7", "userAgent": "curl/8.5.0", "apiKey": None},
        },
        "body": body,
        "isBase64Encoded": is_b64,
    }


def http_v2_event(method: str, path: str, json_body: dict | list | None = None, raw: bytes | None = None,
                  content_type: str | None = None) -> dict:
    """API Gateway HTTP API event (payload format 2.0), $default stage."""
    body, is_b64, content_type = _body(json_body, raw, content_type)
    event = {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"accept": "application/json", "content-type": content_type, "host": HOST,
                    "user-agent": "curl/8.5.0", "x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": HOST,
            "domainPrefix": "abc123",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.7",
                     "userAgent": "curl/8.5.0"},
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": f"{method} {path}",
            "stage": "$default",
            "time": "23/Nov/2026:12:34:56 +0000",
            "timeEpoch": 1795437296000,
        },
        "isBase64Encoded": is_b64,
    }
    if body is not None:
        event["body"] = body
    return event


def sample_events(png: bytes, jpeg: bytes) -> dict[str, dict]:
    """The files of events/: name -> event (see events/README.md)."""
    return {
        "direct-predict.json": direct_event(png),
        "direct-predict-batch.json": {"images": [b64(png), b64(jpeg)]},
        "direct-url.json": {"url": "https://images.example.org/scan.png"},
        "rest-predict-json.json": rest_v1_event("POST", "/predict", {"image": b64(png)}),
        "rest-predict-segment.json": rest_v1_event("POST", "/predict", {"image": b64(png), "segment": True}),
        "rest-predict-png.json": rest_v1_event("POST", "/predict", raw=png),
        "rest-predict-jpeg.json": rest_v1_event("POST", "/predict", raw=jpeg, content_type="image/jpeg"),
        "rest-health.json": rest_v1_event("GET", "/health"),
        "rest-predict-not-an-image.json": rest_v1_event("POST", "/predict", raw=b"hello, not an image",
                                                        content_type="image/png"),
        "http-predict-json.json": http_v2_event("POST", "/predict", {"image": b64(png)}),
        "http-predict-png.json": http_v2_event("POST", "/predict", raw=png),
        "http-health.json": http_v2_event("GET", "/health"),
        "http-wrong-method.json": http_v2_event("GET", "/predict"),
    }


def write_sample_events(folder: str | Path, png: bytes, jpeg: bytes) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, event in sample_events(png, jpeg).items():
        path = folder / name
        path.write_text(json.dumps(event, indent=2) + "\n")
        written.append(path)
    return written
