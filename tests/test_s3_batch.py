"""S3 Batch Operations invocations (busi_classifier/serving/s3_batch.py), against a real
S3 protocol: moto's standalone server on loopback, reached over HTTP by the function's own
boto3 client through the standard AWS_ENDPOINT_URL variable (no test-only code path).
Between the function and moto stands a tiny recording proxy of ours (``S3Proxy``): it
logs every request (so a test can say "the body was never read" or "nothing was written
twice") and, where a test asks, answers as S3 does when it throttles or fails (503
SlowDown XML), which is the real protocol the function meets, not a patched call.

Events are the two shapes AWS documents (batch-ops-invoke-lambda): schema 1.0 (tasks
with ``s3BucketArn``) and 2.0 (tasks with ``s3Bucket``, job with ``userArguments``);
every answer is checked against the documented response shape. Stub predictor, except
one test on the real trained model (slow).
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

import pytest
from api_stub import Context, StubPredictor, stub_handler
from conftest import ROOT, synthetic_images

from busi_classifier.serving.api import MAX_IMAGE_BYTES, make_handler
from busi_classifier.serving.events import direct_event
from busi_classifier.serving.settings import ServingSettings

boto3 = pytest.importorskip("boto3")
pytest.importorskip("flask", reason="moto's server needs flask: pip install -e '.[dev]'")
from moto.server import ThreadedMotoServer  # noqa: E402

RESULT_CODES = ("Succeeded", "TemporaryFailure", "PermanentFailure")
SCHEMAS = ("1.0", "2.0")
REGION = "us-east-1"
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION}


# --- the documented shapes ----------------------------------------------------------

def batch_event(schema: str, bucket: str, keys: list[str], version_ids: list[str | None] | None = None,
                user_arguments: dict | None = None) -> dict:
    """An S3 Batch Operations LambdaInvoke event as AWS documents it; keys URL-encoded as
    S3 sends them (spaces as +, the rest %XX)."""
    version_ids = version_ids or [None] * len(keys)
    tasks = []
    for i, (key, version) in enumerate(zip(keys, version_ids, strict=True)):
        encoded = urllib.parse.quote_plus(key, safe="/")
        if schema == "1.0":
            tasks.append({"taskId": f"dGFzazE{i}", "s3Key": encoded, "s3VersionId": version,
                          "s3BucketArn": f"arn:aws:s3:::{bucket}"})
        else:
            tasks.append({"taskId": f"dGFzazI{i}", "s3Bucket": bucket, "s3Key": encoded, "s3VersionId": version})
    job = {"id": str(uuid.uuid4())}
    if schema == "2.0":
        job["userArguments"] = user_arguments or {"purpose": "busi-scoring"}
    return {"invocationSchemaVersion": schema, "invocationId": base64.b64encode(uuid.uuid4().bytes).decode(),
            "job": job, "tasks": tasks}


def check_documented_answer(answer: dict, event: dict) -> list[dict]:
    """The answer has exactly the documented fields, echoes the schema and invocation id,
    one result per task in order; returns the results with resultString parsed."""
    assert set(answer) == {"invocationSchemaVersion", "treatMissingKeysAs", "invocationId", "results"}, answer
    assert answer["invocationSchemaVersion"] == event["invocationSchemaVersion"]
    assert answer["invocationId"] == event["invocationId"]
    assert answer["treatMissingKeysAs"] == "PermanentFailure"
    assert [r["taskId"] for r in answer["results"]] == [t["taskId"] for t in event["tasks"]]
    parsed = []
    for result in answer["results"]:
        assert set(result) == {"taskId", "resultCode", "resultString"}, result
        assert result["resultCode"] in RESULT_CODES and isinstance(result["resultString"], str)
        assert len(result["resultString"]) <= 1024
        parsed.append({**result, "resultString": json.loads(result["resultString"])})
    assert json.loads(json.dumps(answer)) == answer
    return parsed


# --- S3 on loopback -------------------------------------------------------------------

@pytest.fixture(scope="session")
def moto_url():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


class S3Proxy:
    """A loopback HTTP server that forwards every request to ``upstream`` and records
    (method, path, query) of each; ``fail[(method, what)] = (status, code)`` answers those
    requests as S3 does instead (what: an object key, "object" for any, or "bucket")."""

    def __init__(self, upstream: str):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.requests: list[tuple[str, str, str]] = []
        self.fail: dict[tuple[str, str], tuple[int, str]] = {}
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_one(self):
                parts = urllib.parse.urlsplit(self.path)
                path = urllib.parse.unquote(parts.path)
                proxy.requests.append((self.command, path, parts.query))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                names = path.lstrip("/").split("/", 1)
                kind, key = ("object", names[1]) if len(names) == 2 and names[1] else ("bucket", None)
                rule = proxy.fail.get((self.command, key)) or proxy.fail.get((self.command, kind))
                if rule:
                    status, code = rule
                    xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                           f"<Message>{code}</Message><RequestId>PROXY</RequestId></Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(xml)
                    return
                connection = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                headers["Host"] = proxy.upstream.netloc
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", response.getheader("Content-Length") or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = handle_one

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self, method: str, key: str | None = None, bucket: str | None = None) -> int:
        return sum(1 for m, path, _ in self.requests if m == method
                   and (key is None or path.split("/", 2)[-1] == key)
                   and (bucket is None or path.strip("/").split("/")[0] == bucket))

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(moto_url):
    proxy = S3Proxy(moto_url)
    yield proxy
    proxy.close()


@pytest.fixture
def aws_env(monkeypatch, tmp_path, proxy):
    """The function's environment: fake credentials, no profile or config file of the
    machine, boto3's standard endpoint override pointing at the recording proxy."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "RESULTS_BUCKET",
                 "RESULTS_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    return monkeypatch


@pytest.fixture
def s3(moto_url):
    """The test's own client, straight to moto (its requests are not in the proxy's log)."""
    return boto3.client("s3", endpoint_url=moto_url, region_name=REGION, aws_access_key_id="testing",
                        aws_secret_access_key="testing")


@pytest.fixture
def bucket(s3):
    name = f"scans-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def png(synthetic_dir) -> bytes:
    return synthetic_images(synthetic_dir, 1)[0][1]


def etag_of(s3, bucket, key) -> str:
    return s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


def result_key(etag: str, prefix: str = "busi-results/", model_version: str = StubPredictor.model_version) -> str:
    return f"{prefix}{model_version}/{etag}.json"


# --- the good path --------------------------------------------------------------------

@pytest.mark.parametrize("schema", SCHEMAS)
def test_a_good_image_is_scored_and_its_result_written(aws_env, s3, bucket, png, proxy, schema):
    s3.put_object(Bucket=bucket, Key="scans/case-1.png", Body=png)
    etag = etag_of(s3, bucket, "scans/case-1.png")
    handler = stub_handler()
    event = batch_event(schema, bucket, ["scans/case-1.png"])
    [result] = check_documented_answer(handler(event, Context()), event)
    expected = StubPredictor().predict_bytes(png)
    assert result["resultCode"] == "Succeeded", result
    uri = f"s3://{bucket}/{result_key(etag)}"
    assert result["resultString"] == {"status": "scored", "prediction": expected["prediction"], "result": uri}
    written = json.loads(s3.get_object(Bucket=bucket, Key=result_key(etag))["Body"].read())
    assert written == {"bucket": bucket, "key": "scans/case-1.png", "version_id": None, "etag": etag,
                       "size": len(png), "model_version": "stub-1", "prediction": expected["prediction"],
                       "probabilities": expected["probabilities"]}
    assert s3.head_object(Bucket=bucket, Key=result_key(etag))["ContentType"] == "application/json"
    # HEAD source, HEAD result, GET source, PUT result: nothing else
    assert [m for m, _, _ in proxy.requests] == ["HEAD", "HEAD", "GET", "PUT"]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_the_same_task_again_writes_nothing(aws_env, s3, bucket, png, proxy, schema):
    s3.put_object(Bucket=bucket, Key="a.png", Body=png)
    etag = etag_of(s3, bucket, "a.png")
    handler = stub_handler()
    first = handler(batch_event(schema, bucket, ["a.png"]), Context())
    assert first["results"][0]["resultCode"] == "Succeeded"
    written = s3.head_object(Bucket=bucket, Key=result_key(etag))
    puts, gets = proxy.count("PUT"), proxy.count("GET")
    time.sleep(1.1)  # LastModified has one-second resolution
    event = batch_event(schema, bucket, ["a.png"])
    [again] = check_documented_answer(stub_handler()(event, Context()), event)  # a new instance, too
    assert again["resultCode"] == "Succeeded"
    assert again["resultString"] == {"status": "already scored", "result": f"s3://{bucket}/{result_key(etag)}"}
    assert (proxy.count("PUT"), proxy.count("GET")) == (puts, gets), "the image was read or the result rewritten"
    after = s3.head_object(Bucket=bucket, Key=result_key(etag))
    assert (after["LastModified"], after["ETag"]) == (written["LastModified"], written["ETag"])


def test_a_result_written_meanwhile_is_not_overwritten(aws_env, s3, bucket, png, proxy):
    """Two runs racing: this one's HEAD of the result missed (the proxy answers it 404),
    another wrote it meanwhile; the PUT is conditional (IfNoneMatch *): the first stays."""
    s3.put_object(Bucket=bucket, Key="race.png", Body=png)
    etag = etag_of(s3, bucket, "race.png")
    s3.put_object(Bucket=bucket, Key=result_key(etag), Body=b'{"first": true}')
    proxy.fail[("HEAD", result_key(etag))] = (404, "NotFound")
    event = batch_event("2.0", bucket, ["race.png"])
    [result] = check_documented_answer(stub_handler()(event, Context()), event)
    assert result["resultCode"] == "Succeeded" and result["resultString"]["status"] == "already scored"
    assert proxy.count("PUT") == 1
    assert s3.get_object(Bucket=bucket, Key=result_key(etag))["Body"].read() == b'{"first": true}'


@pytest.mark.parametrize("schema", SCHEMAS)
def test_a_key_with_spaces_plus_and_unicode_is_decoded(aws_env, s3, bucket, png, schema):
    key = "patients/Zoë Müller/scan 1+2 (left) ü%.png"
    s3.put_object(Bucket=bucket, Key=key, Body=png)
    event = batch_event(schema, bucket, [key])
    assert "+" in event["tasks"][0]["s3Key"] and "%C3%BC" in event["tasks"][0]["s3Key"]
    assert "%2B" in event["tasks"][0]["s3Key"] and " " not in event["tasks"][0]["s3Key"]
    [result] = check_documented_answer(stub_handler()(event, Context()), event)
    assert result["resultCode"] == "Succeeded", result
    written = json.loads(s3.get_object(Bucket=bucket, Key=result_key(etag_of(s3, bucket, key)))["Body"].read())
    assert written["key"] == key


def test_results_bucket_and_prefix_settings_and_a_versioned_object(aws_env, s3, bucket, png, proxy):
    results = f"results-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=results)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    old = s3.put_object(Bucket=bucket, Key="v.png", Body=png)["VersionId"]
    s3.put_object(Bucket=bucket, Key="v.png", Body=b"a newer version that is no image")
    aws_env.setenv("RESULTS_BUCKET", results)
    aws_env.setenv("RESULTS_PREFIX", "scores/busi/")
    handler = stub_handler()
    assert handler.settings.errors == ()
    event = batch_event("1.0", bucket, ["v.png"], version_ids=[old])
    [result] = check_documented_answer(handler(event, Context()), event)
    assert result["resultCode"] == "Succeeded", result
    etag = s3.head_object(Bucket=bucket, Key="v.png", VersionId=old)["ETag"].strip('"')
    key = result_key(etag, prefix="scores/busi/")
    assert result["resultString"]["result"] == f"s3://{results}/{key}"
    written = json.loads(s3.get_object(Bucket=results, Key=key)["Body"].read())
    assert (written["version_id"], written["size"]) == (old, len(png))
    assert s3.list_objects_v2(Bucket=bucket, Prefix="scores/").get("KeyCount") == 0


def test_several_tasks_in_one_invocation_each_get_a_result(aws_env, s3, bucket, png, synthetic_dir):
    images = synthetic_images(synthetic_dir, 1)
    keys = []
    for i, (_, data) in enumerate(images):
        keys.append(f"many/{i}.png")
        s3.put_object(Bucket=bucket, Key=keys[-1], Body=data)
    s3.put_object(Bucket=bucket, Key="many/bad.png", Body=b"nope")
    event = batch_event("2.0", bucket, [*keys, "many/bad.png", "many/missing.png"])
    results = check_documented_answer(stub_handler()(event, Context()), event)
    assert [r["resultCode"] for r in results] == ["Succeeded"] * len(keys) + ["PermanentFailure"] * 2
    stub = StubPredictor()
    assert [r["resultString"]["prediction"] for r in results[:-2]] == [stub.predict_bytes(d)["prediction"]
                                                                       for _, d in images]


# --- refusals ----------------------------------------------------------------------------

@pytest.mark.parametrize("schema", SCHEMAS)
def test_a_refused_image_is_a_permanent_failure_with_the_api_code(aws_env, s3, bucket, proxy, schema):
    s3.put_object(Bucket=bucket, Key="notes.txt", Body=b"this is not an image")
    event = batch_event(schema, bucket, ["notes.txt"])
    [result] = check_documented_answer(stub_handler()(event, Context()), event)
    assert result["resultCode"] == "PermanentFailure"
    assert result["resultString"]["error"] == "invalid_image" and result["resultString"]["message"]
    assert proxy.count("PUT") == 0
    direct = stub_handler()(direct_event(b"this is not an image"), Context())
    assert direct["error"]["code"] == "invalid_image"  # the API's code for the same bytes


@pytest.mark.parametrize("schema", SCHEMAS)
def test_a_missing_key_is_a_permanent_failure(aws_env, bucket, proxy, schema):
    event = batch_event(schema, bucket, ["no/such/key.png"])
    [result] = check_documented_answer(stub_handler()(event, Context()), event)
    assert result["resultCode"] == "PermanentFailure"
    assert result["resultString"]["error"] == "s3_not_found"
    assert proxy.count("GET") == 0 and proxy.count("PUT") == 0


def test_a_missing_bucket_is_a_permanent_failure(aws_env):
    event = batch_event("2.0", f"no-such-{uuid.uuid4().hex[:8]}", ["x.png"])
    [result] = check_documented_answer(stub_handler()(event, Context()), event)
    assert (result["resultCode"], result["resultString"]["error"]) == ("PermanentFailure", "s3_not_found")


@pytest.mark.parametrize("schema", SCHEMAS)
def test_an_oversized_object_is_refused_before_its_body_is_read(aws_env, s3, bucket, png, proxy, schema):
    big = png + bytes(5_000_000)  # 5 MB: over MAX_IMAGE_BYTES
    assert len(big) > MAX_IMAGE_BYTES
    from busi_classifier.serving import s3_batch

    assert s3_batch.MAX_IMAGE_BYTES == MAX_IMAGE_BYTES  # the API's cap (api.MAX_IMAGE_BYTES)
    s3.put_object(Bucket=bucket, Key="big.png", Body=big)
    event = batch_event(schema, bucket, ["big.png"])
    [result] = check_documented_answer(stub_handler()(event, Context()), event)
    assert result["resultCode"] == "PermanentFailure"
    assert result["resultString"]["error"] == "payload_too_large"
    assert str(MAX_IMAGE_BYTES) in result["resultString"]["message"]
    assert proxy.count("HEAD", key="big.png") == 1
    assert proxy.count("GET") == 0, "the body was read: " + repr(proxy.requests)
    assert proxy.count("PUT") == 0


def test_access_denied_is_a_permanent_failure(aws_env, s3, bucket, png, proxy):
    s3.put_object(Bucket=bucket, Key="secret.png", Body=png)
    proxy.fail[("GET", "object")] = (403, "AccessDenied")
    event = batch_event("1.0", bucket, ["secret.png"])
    [result] = check_documented_answer(stub_handler()(event, Context()), event)
    assert (result["resultCode"], result["resultString"]["error"]) == ("PermanentFailure", "s3_access_denied")


def test_a_malformed_task_and_an_unknown_schema_are_permanent_failures(aws_env, bucket):
    handler = stub_handler()
    event = batch_event("1.0", bucket, ["x.png"])
    event["tasks"][0]["s3BucketArn"] = "not-an-arn"
    [result] = check_documented_answer(handler(event, Context()), event)
    assert (result["resultCode"], result["resultString"]["error"]) == ("PermanentFailure", "invalid_task")
    event = {**batch_event("2.0", bucket, ["x.png"]), "invocationSchemaVersion": "3.0"}
    [result] = check_documented_answer(handler(event, Context()), event)
    assert (result["resultCode"], result["resultString"]["error"]) == ("PermanentFailure", "invalid_request")


# --- what S3 Batch retries -------------------------------------------------------------

@pytest.mark.parametrize("schema", SCHEMAS)
def test_throttling_is_a_temporary_failure(aws_env, s3, bucket, png, proxy, schema):
    """The proxy answers GetObject with 503 SlowDown (S3's throttling answer); botocore's
    standard retry mode tries AWS_MAX_ATTEMPTS times, then S3 Batch gets TemporaryFailure."""
    s3.put_object(Bucket=bucket, Key="busy.png", Body=png)
    aws_env.setenv("AWS_MAX_ATTEMPTS", "2")
    proxy.fail[("GET", "object")] = (503, "SlowDown")
    event = batch_event(schema, bucket, ["busy.png"])
    [result] = check_documented_answer(stub_handler()(event, Context()), event)
    assert result["resultCode"] == "TemporaryFailure"
    assert result["resultString"]["error"] == "s3_throttled"
    assert proxy.count("GET", key="busy.png") == 2, "botocore retried the throttled request once"
    assert proxy.count("PUT") == 0


def test_a_5xx_on_the_result_write_is_a_temporary_failure(aws_env, s3, bucket, png, proxy):
    s3.put_object(Bucket=bucket, Key="ok.png", Body=png)
    aws_env.setenv("AWS_MAX_ATTEMPTS", "1")
    proxy.fail[("PUT", "object")] = (500, "InternalError")
    event = batch_event("2.0", bucket, ["ok.png"])
    [result] = check_documented_answer(stub_handler()(event, Context()), event)
    assert (result["resultCode"], result["resultString"]["error"]) == ("TemporaryFailure", "s3_unavailable")


def test_s3_unreachable_is_a_temporary_failure(aws_env, bucket):
    from container_layout import free_port

    aws_env.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    aws_env.setenv("AWS_MAX_ATTEMPTS", "1")
    event = batch_event("1.0", bucket, ["x.png"])
    [result] = check_documented_answer(stub_handler()(event, Context()), event)
    assert (result["resultCode"], result["resultString"]["error"]) == ("TemporaryFailure", "s3_unavailable")


def test_model_unavailable_and_the_deadline_are_temporary_failures(aws_env, s3, bucket, png, proxy):
    s3.put_object(Bucket=bucket, Key="later.png", Body=png)
    unloaded = stub_handler(load_error="no model")
    event = batch_event("1.0", bucket, ["later.png"])
    [result] = check_documented_answer(unloaded(event, Context()), event)
    assert (result["resultCode"], result["resultString"]["error"]) == ("TemporaryFailure", "model_unavailable")
    assert proxy.requests == []

    class Late(Context):
        def get_remaining_time_in_millis(self):
            return 1500  # less than a task needs after the margin

    event = batch_event("2.0", bucket, ["later.png", "later.png"])
    results = check_documented_answer(stub_handler()(event, Late()), event)
    assert [(r["resultCode"], r["resultString"]["error"]) for r in results] == [
        ("TemporaryFailure", "deadline_exceeded")] * 2


# --- the handler's other paths are untouched -------------------------------------------------

def test_only_a_batch_shaped_event_goes_to_s3_batch(png):
    handler = stub_handler()
    assert handler({"invocationSchemaVersion": "1.0"}, Context())["error"]["code"] == "missing_image"
    assert handler({"tasks": []}, Context())["error"]["code"] == "missing_image"
    assert handler(direct_event(png), Context())["prediction"] in StubPredictor.classes
    empty = {"invocationSchemaVersion": "1.0", "invocationId": "x", "job": {"id": "j"}, "tasks": []}
    assert check_documented_answer(handler(empty, Context()), empty) == []


def test_the_batch_log_line_and_metrics(aws_env, s3, bucket, png, capsys):
    s3.put_object(Bucket=bucket, Key="log.png", Body=png)
    handler = stub_handler()
    capsys.readouterr()
    handler(batch_event("1.0", bucket, ["log.png", "nothing.png"]), Context("req-batch"))
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    [line] = [r for r in records if r.get("message") == "request"]
    assert (line["route"], line["tasks"], line["succeeded"], line["permanent_failures"]) == ("s3_batch", 2, 1, 1)
    assert line["request_id"] == "req-batch" and line["error"] == "s3_not_found"
    assert any(r.get("Route") == "s3_batch" and "_aws" in r for r in records)
    assert "log.png" not in json.dumps(line)


API_PATH_IMPORTS = r'''
import json, sys
sys.path[:0] = [ROOT, TESTS]
import lambda_function  # MODEL_PATH points nowhere: init runs, answers 503
PNG = open(PNG_FILE, "rb").read()
from api_stub import stub_handler
from busi_classifier.serving.events import http_v2_event, direct_event
handler = stub_handler()
assert handler(http_v2_event("POST", "/predict", raw=PNG), None)["statusCode"] == 200
assert "prediction" in handler(direct_event(PNG), None)
assert lambda_function.lambda_handler(http_v2_event("GET", "/health"), None)["statusCode"] == 503
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "botocore", "s3transfer")
                or m == "busi_classifier.serving.s3_batch")
if "--batch" in sys.argv:
    handler({"invocationSchemaVersion": "1.0", "invocationId": "i", "job": {"id": "j"},
             "tasks": [{"taskId": "t", "s3Key": "k", "s3VersionId": None, "s3BucketArn": "arn:aws:s3:::b"}]}, None)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "botocore"))
print(json.dumps(loaded))
'''


def test_the_api_path_never_imports_boto3(png, tmp_path):
    """lambda_function and API events, in a fresh interpreter: neither boto3 nor
    s3_batch is in sys.modules. A batch event then loads boto3 (the check can see it)."""
    (tmp_path / "scan.png").write_bytes(png)
    script = (API_PATH_IMPORTS.replace("ROOT", repr(str(ROOT))).replace("TESTS", repr(str(ROOT / "tests")))
              .replace("PNG_FILE", repr(str(tmp_path / "scan.png"))))
    env = {"MODEL_PATH": str(tmp_path / "none"), "PATH": "/usr/bin:/bin", "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
           "AWS_MAX_ATTEMPTS": "1", "AWS_CONFIG_FILE": str(tmp_path / "c"), **FAKE_CREDENTIALS,
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "c")}
    api = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert api.returncode == 0, api.stderr[-3000:]
    assert json.loads(api.stdout.splitlines()[-1]) == []
    batch = subprocess.run([sys.executable, "-c", script, "--batch"], capture_output=True, text=True, env=env,
                           timeout=120)
    assert batch.returncode == 0, batch.stderr[-3000:]
    assert "boto3" in json.loads(batch.stdout.splitlines()[-1])


# --- settings ------------------------------------------------------------------------------

def test_results_settings_defaults_and_values():
    default = ServingSettings.from_env({})
    assert (default.results_bucket, default.results_prefix, default.errors) == (None, "busi-results/", ())
    set_ = ServingSettings.from_env({"RESULTS_BUCKET": "my.results-bucket", "RESULTS_PREFIX": "a/b c/"})
    assert (set_.results_bucket, set_.results_prefix, set_.errors) == ("my.results-bucket", "a/b c/", ())


@pytest.mark.parametrize("name,value", [
    ("RESULTS_BUCKET", "Upper"), ("RESULTS_BUCKET", "ab"), ("RESULTS_BUCKET", "s3://bucket"),
    ("RESULTS_BUCKET", "a..b"), ("RESULTS_BUCKET", "x" * 64), ("RESULTS_PREFIX", "no-slash"),
    ("RESULTS_PREFIX", "/leading/"), ("RESULTS_PREFIX", "bad\nline/"), ("RESULTS_PREFIX", "p" * 600 + "/"),
])
def test_a_bad_results_setting_is_a_settings_error(name, value):
    settings = ServingSettings.from_env({name: value})
    assert len(settings.errors) == 1 and settings.errors[0].startswith(f"{name}=")
    assert settings.results_bucket is None and settings.results_prefix == "busi-results/"


# --- the real model (slow) --------------------------------------------------------------------

def test_the_real_model_scores_an_s3_object_as_the_api_does(aws_env, s3, bucket, trained_model, synthetic_dir):
    _, data = synthetic_images(synthetic_dir, 1)[-1]
    s3.put_object(Bucket=bucket, Key="real.png", Body=data)
    handler = make_handler(ServingSettings.from_env({"MODEL_PATH": str(trained_model)}))
    assert handler.predictor is not None
    event = batch_event("2.0", bucket, ["real.png"])
    [result] = check_documented_answer(handler(event, Context()), event)
    assert result["resultCode"] == "Succeeded", result
    api = handler(direct_event(data), Context())
    key = result_key(etag_of(s3, bucket, "real.png"), model_version=handler.predictor.model_version)
    written = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert written["prediction"] == api["prediction"] == result["resultString"]["prediction"]
    assert written["probabilities"] == pytest.approx(api["probabilities"], abs=1e-6)
    assert written["model_version"] == api["model_version"]
