"""Property-based fuzzing of the local HTTP endpoint against openapi.yaml (schemathesis):
requests that fit the spec and requests that break it, over loopback. No 5xx, no status,
content type, header or body outside the spec, and data that breaks the spec is refused
with a 4xx. Runs with the stub predictor (the real decoding)."""

from __future__ import annotations

import threading

import pytest
import schemathesis
from api_stub import stub_handler
from conftest import ROOT
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from busi_classifier.local.server import make_server

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]
EXAMPLES = 200  # per operation

schema = schemathesis.openapi.from_path(ROOT / "openapi.yaml")
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=EXAMPLES,
                                deterministic=True)


@pytest.fixture
def endpoint():
    server = make_server(stub_handler(), port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.url
    server.shutdown()
    server.server_close()


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), max_examples=EXAMPLES)
def test_the_api_conforms_to_openapi_yaml(case, endpoint):
    case.call_and_validate(base_url=endpoint, checks=CHECKS, timeout=30)
