"""Builders for the Lambda event shapes the function accepts (API Gateway REST API
payload 1.0, HTTP API payload 2.0, direct invocation). Used by the demo, the tests and
anyone who wants a realistic event without AWS."""

from __future__ import annotations

import base64
import json


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def direct_event(image: bytes) -> dict:
    """Direct invocation / console test event / non-proxy integration."""
    return {"image": b64(image)}


def _body(json_body: dict | None, raw: bytes | None) -> tuple[str | None, bool, str]:
    if raw is not None:
        return b64(raw), True, "image/png"
    if json_body is not None:
        return json.dumps(json_body), False, "application/json"
    return None, False, "application/json"


def rest_v1_event(method: str, path: str, json_body: dict | None = None, raw: bytes | None = None,
                  stage: str = "prod") -> dict:
    """API Gateway REST API proxy integration event (payload format 1.0)."""
    body, is_b64, content_type = _body(json_body, raw)
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": {"Content-Type": content_type, "Host": "abc123.execute-api.us-east-1.amazonaws.com"},
        "multiValueHeaders": {"Content-Type": [content_type]},
        "queryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": path,
            "httpMethod": method,
            "path": f"/{stage}{path}",
            "stage": stage,
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "identity": {"sourceIp": "203.0.113.7"},
        },
        "body": body,
        "isBase64Encoded": is_b64,
    }


def http_v2_event(method: str, path: str, json_body: dict | None = None, raw: bytes | None = None) -> dict:
    """API Gateway HTTP API event (payload format 2.0), $default stage."""
    body, is_b64, content_type = _body(json_body, raw)
    event = {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"content-type": content_type, "host": "abc123.execute-api.us-east-1.amazonaws.com"},
        "requestContext": {
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.7"},
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": f"{method} {path}",
            "stage": "$default",
        },
        "isBase64Encoded": is_b64,
    }
    if body is not None:
        event["body"] = body
    return event
