"""openapi.yaml, the code and the README say the same thing: a valid OpenAPI document,
every error code the code can answer is in the spec and in the README's table with its
status, the limits match the handler's, and the spec's examples work."""

from __future__ import annotations

import math
import re

import pytest
import yaml
from api_stub import Context, body_of, stub_handler
from conftest import ROOT

from busi_classifier.serving.api import MAX_BATCH, MAX_BODY_BYTES, MAX_IMAGE_BYTES, MAX_URL_CHARS
from busi_classifier.serving.events import rest_v1_event

SPEC = yaml.safe_load((ROOT / "openapi.yaml").read_text())
SCHEMAS = SPEC["components"]["schemas"]
SPEC_CODES = SCHEMAS["Error"]["properties"]["error"]["properties"]["code"]["enum"]
README = (ROOT / "docs" / "api.md").read_text()  # the API documentation
GATEWAY_ONLY = {"invalid_api_key", "throttled", "gateway_rejected", "gateway_error"}  # template.yaml answers these


def code_statuses() -> dict[str, set[int]]:
    """code -> statuses, as the serving code (its error table) and the local server write them."""
    from busi_classifier.serving.api import ERRORS

    found = {code: {status} for code, (status, _) in ERRORS.items()}
    server = (ROOT / "busi_classifier" / "local" / "server.py").read_text()
    for status, code in re.findall(r'_send\(\s*(\d{3}),.*?_error_json\("(\w+)"', server, re.DOTALL):
        found.setdefault(code, set()).add(int(status))
    return found


def readme_table() -> dict[str, str]:
    """code -> status from the README's error table."""
    rows = re.findall(r"^\| (\d{3}|\dxx) \| `(\w+)` \|", README, re.MULTILINE)
    return {code: status for status, code in rows}


def test_the_spec_is_valid_openapi():
    from openapi_spec_validator import validate

    validate(SPEC)


def test_every_code_the_code_answers_is_in_the_spec_and_the_readme():
    table = readme_table()
    for code, statuses in code_statuses().items():
        if code == "bad_gateway":  # the local server's answer to a malformed handler answer
            continue
        assert code in SPEC_CODES, f"{code} missing from openapi.yaml"
        assert code in table, f"{code} missing from the README's error table"
        assert table[code] in {str(s) for s in statuses}, f"README gives {code} status {table[code]}, code {statuses}"


def test_every_code_in_the_spec_is_in_the_readme():
    table = readme_table()
    assert set(SPEC_CODES) == set(table), set(SPEC_CODES) ^ set(table)
    template = (ROOT / "template.yaml").read_text()
    for code in GATEWAY_ONLY:
        assert f'"code": "{code}"' in template


def test_each_error_status_is_a_documented_response():
    predict = SPEC["paths"]["/predict"]["post"]["responses"]
    for code, statuses in code_statuses().items():
        for status in statuses:
            if status < 500 and code not in ("bad_gateway", "not_found"):  # 404: paths outside the spec
                assert str(status) in predict, (code, status)


def test_limits_match_the_handler():
    assert SCHEMAS["ImageRequest"]["properties"]["image"]["maxLength"] == 4 * math.ceil(MAX_IMAGE_BYTES / 3)
    assert SCHEMAS["RawImage"]["maxLength"] == MAX_IMAGE_BYTES
    assert SCHEMAS["BatchRequest"]["properties"]["images"]["maxItems"] == MAX_BATCH
    assert SCHEMAS["UrlRequest"]["properties"]["url"]["maxLength"] == MAX_URL_CHARS
    assert MAX_BODY_BYTES == 6 * 1024 * 1024
    for text in ("4,400,000", "6,291,456", "about 4.4 MB"):
        assert text in README
        assert text.replace(",", "") in SPEC["info"]["description"].replace(",", "")


@pytest.mark.parametrize("name", ["image", "images", "url", "explain", "segment"])
def test_the_spec_examples_work(name, monkeypatch):
    monkeypatch.delenv("IMAGE_URL_ALLOWLIST", raising=False)
    example = SPEC["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["examples"][name]["value"]
    answer = stub_handler()(rest_v1_event("POST", "/predict", example), Context())
    if name == "url":
        assert answer["statusCode"] == 400 and body_of(answer)["error"]["code"] == "url_not_allowed"
    else:
        assert answer["statusCode"] == 200, answer["body"]
        body = body_of(answer)
        assert ("explanation" in body) is (name == "explain") and ("lesion" in body) is (name == "segment")


def test_both_501_codes_are_the_documented_501():
    """explain_unavailable and segment_unavailable: one 501 response, naming both."""
    from busi_classifier.serving.api import ERRORS

    described = SPEC["components"]["responses"]["NotAvailableForThisModel"]["description"]
    for code in ("explain_unavailable", "segment_unavailable"):
        assert ERRORS[code][0] == 501 and code in described and readme_table()[code] == "501"
    assert SPEC["paths"]["/predict"]["post"]["responses"]["501"]["$ref"].endswith("/NotAvailableForThisModel")


def test_readme_documents_deploy_and_the_local_server():
    docs = README + (ROOT / "docs" / "deploy.md").read_text()
    for text in ("sam build", "sam deploy --guided", "--stack busi-classifier", "--endpoint $URL",
                 "python -m busi_classifier serve --port 8000", "curl -s localhost:8000/health",
                 "IMAGE_URL_ALLOWLIST", "EMF", "x-api-key"):
        assert text in docs, text
