"""S3 Batch Operations invocations: score each task's object, write one result object.

api.Function sends here every event that is a dict with ``invocationSchemaVersion`` and
``tasks`` (importing this module lazily, and handing it the API's intake and error
mapping: this module never imports api, so imports run one way): the two shapes AWS documents for the LambdaInvoke operation
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/batch-ops-invoke-lambda.html):

* schema 1.0: ``{"invocationSchemaVersion": "1.0", "invocationId", "job": {"id"},
  "tasks": [{"taskId", "s3Key", "s3VersionId", "s3BucketArn"}]}``;
* schema 2.0: ``{"invocationSchemaVersion": "2.0", "invocationId", "job": {"id",
  "userArguments"}, "tasks": [{"taskId", "s3Bucket", "s3Key", "s3VersionId"}]}``.

The answer is ``{"invocationSchemaVersion": <same>, "treatMissingKeysAs":
"PermanentFailure", "invocationId": <same>, "results": [{"taskId", "resultCode",
"resultString"}]}``, one result per task, in order. ``resultString`` is a short JSON
object: ``{"status": "scored", "prediction", "result": "s3://..."}`` (plus
``"in_distribution"`` where the model has the input check), ``{"status": "already
scored", "result"}`` or ``{"error": code, "message": sentence}``.

Per task (the key arrives URL-encoded: ``unquote_plus``):

1. HEAD the object; a ContentLength over api.MAX_IMAGE_BYTES is refused
   (``payload_too_large``) before a byte of the body is read;
2. HEAD ``s3://RESULTS_BUCKET/RESULTS_PREFIX{model_version}/{etag}.json``: where it
   exists, the image was scored already and nothing is read or written;
3. GET the object (``IfMatch`` the ETag that HEAD saw, at most MAX_IMAGE_BYTES read) and
   run the API's own intake on it (``intake``: api.predict_images, i.e. inspect_image,
   the pixel and deadline checks, predictor.predict_bytes; errors through ``error_for``,
   api.app.error_for, so a refused image gets the API's code);
4. PUT the result (bucket, key, version_id, etag, size, model_version, prediction,
   probabilities, and input_check where the model has the check) with ``IfNoneMatch: *``:
   two runs racing write it once. With OOD_ACTION=refuse an image the check flags is the
   API's 422 ``out_of_distribution``: a PermanentFailure, nothing written.

Result codes: ``Succeeded``; ``TemporaryFailure`` (S3 Batch retries it) for throttling
(SlowDown, 429, 503), other S3 5xx, timeouts and dropped connections, the model not being
loaded (503) and the invocation's deadline (504); ``PermanentFailure`` for a refused image,
a missing key, bucket or version (404), access denied (403) and any other client error.

boto3 is imported here only, lazily, on the first S3 Batch invocation: the API path never
loads it (tests/test_layout.py and tests/test_s3_batch.py say so). The client is boto3's
own: region, credentials and endpoint (AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3) come from
its standard configuration, retries are botocore's standard mode (AWS_MAX_ATTEMPTS).
"""

from __future__ import annotations

import json
import time
import traceback
import urllib.parse
import weakref
from dataclasses import dataclass

from .settings import MAX_IMAGE_BYTES  # = api.MAX_IMAGE_BYTES, the API's image cap

SCHEMA_VERSIONS = ("1.0", "2.0")
SUCCEEDED, TEMPORARY, PERMANENT = "Succeeded", "TemporaryFailure", "PermanentFailure"
RESULT_CODES = (SUCCEEDED, TEMPORARY, PERMANENT)
ALREADY_SCORED = "already scored"
ROUTE = "s3_batch"  # the metrics' Route dimension for these invocations
CONNECT_TIMEOUT_S = 3
READ_TIMEOUT_S = 10
# Time a task needs beyond the image's own (four S3 requests): below this much left, the
# remaining tasks answer TemporaryFailure deadline_exceeded and S3 Batch retries them.
TASK_OVERHEAD_S = 2.0
MAX_RESULT_STRING = 1024

# S3 error codes that a retry may cure (besides any 5xx and 429)
TEMPORARY_S3_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                      "ServiceUnavailable", "InternalError", "TooManyRequests", "RequestLimitExceeded",
                      "PreconditionFailed", "ConditionalRequestConflict", "OperationAborted"}
MISSING_S3_CODES = {"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "NotFound", "404"}
DENIED_S3_CODES = {"AccessDenied", "AllAccessDisabled", "403"}
S3_MESSAGES = {
    "s3_not_found": "the object, its version or its bucket does not exist",
    "s3_access_denied": "this function may not read the object or write its result",
    "s3_throttled": "S3 asked to slow down; S3 Batch Operations will retry this task",
    "s3_unavailable": "S3 could not be reached or failed; S3 Batch Operations will retry this task",
    "s3_error": "S3 refused the request",
    "invalid_task": "the task names no bucket or key this function can read",
    "payload_too_large": f"the object is larger than the image limit of {MAX_IMAGE_BYTES} bytes",
    "model_unavailable": "the model is not loaded on this function (its log says why); S3 Batch Operations "
                         "will retry this task",
    "deadline_exceeded": "this invocation ran out of time before this task; S3 Batch Operations will retry it",
    "internal_error": "the model could not process this object",
}
TEMPORARY_STATUSES = (503, 504)  # API answers worth a retry: model_unavailable, deadline_exceeded

_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Function -> its S3 client, made once


class TaskFailure(Exception):
    """A task that is not Succeeded: its result code, error code, sentence (for the
    answer) and detail (for the log only)."""

    def __init__(self, result_code: str, error: str, message: str, detail: str | None = None):
        super().__init__(message)
        self.result_code, self.error, self.message, self.detail = result_code, error, message, detail


@dataclass
class Outcome:
    result_code: str
    summary: dict  # becomes resultString
    prediction: str | None = None
    error: str | None = None
    detail: str | None = None


def s3_client(function) -> object:
    """The function's S3 client (boto3 imported here, on the first batch invocation)."""
    client = _clients.get(function)
    if client is None:
        import boto3
        from botocore.config import Config

        config = Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S, retries={"mode": "standard"})
        client = _clients[function] = boto3.client("s3", config=config)
    return client


def task_object(task: dict, schema: str) -> tuple[str, str, str | None]:
    """(bucket, key, version id or None) of a task; the key URL-decoded."""
    if schema == "2.0":
        bucket = task.get("s3Bucket")
    else:
        arn = task.get("s3BucketArn")
        bucket = arn.split(":::", 1)[1] if isinstance(arn, str) and arn.startswith("arn:") and ":::" in arn else None
    key, version = task.get("s3Key"), task.get("s3VersionId")
    if not isinstance(bucket, str) or not bucket or not isinstance(key, str) or not key:
        raise TaskFailure(PERMANENT, "invalid_task", S3_MESSAGES["invalid_task"], f"task {sorted(task)}")
    if version is not None and not isinstance(version, str):
        raise TaskFailure(PERMANENT, "invalid_task", S3_MESSAGES["invalid_task"], "s3VersionId is not a string")
    return bucket, urllib.parse.unquote_plus(key, encoding="utf-8"), version or None


def s3_failure(exc: Exception, action: str) -> TaskFailure:
    """The task failure for a botocore exception from ``action`` (HeadObject, ...)."""
    from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError, IncompleteReadError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        detail = f"{action}: {code} (HTTP {status})"
        if code in ("SlowDown", "Throttling", "ThrottlingException", "TooManyRequests") or status in (429, 503):
            return TaskFailure(TEMPORARY, "s3_throttled", S3_MESSAGES["s3_throttled"], detail)
        if code in TEMPORARY_S3_CODES or status >= 500:
            return TaskFailure(TEMPORARY, "s3_unavailable", S3_MESSAGES["s3_unavailable"], detail)
        if code in MISSING_S3_CODES or status == 404:
            return TaskFailure(PERMANENT, "s3_not_found", S3_MESSAGES["s3_not_found"], detail)
        if code in DENIED_S3_CODES or status == 403:
            return TaskFailure(PERMANENT, "s3_access_denied", S3_MESSAGES["s3_access_denied"], detail)
        return TaskFailure(PERMANENT, "s3_error", S3_MESSAGES["s3_error"], detail)
    if isinstance(exc, ConnectionError | HTTPClientError | IncompleteReadError):  # timeouts, resets
        return TaskFailure(TEMPORARY, "s3_unavailable", S3_MESSAGES["s3_unavailable"],
                           f"{action}: {type(exc).__name__}")
    if isinstance(exc, BotoCoreError):  # no credentials, a bad parameter: retrying will not help
        return TaskFailure(PERMANENT, "s3_error", S3_MESSAGES["s3_error"], f"{action}: {type(exc).__name__}: {exc}")
    raise exc


def s3_call(method, action: str, **params) -> dict:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return method(**params)
    except (BotoCoreError, ClientError) as exc:
        raise s3_failure(exc, action) from None


def result_exists(client, bucket: str, key: str) -> bool:
    """Whether the result object is there. A 403 says nothing (S3 answers 403 for a
    missing key to a caller without ListBucket): False, and the conditional PUT decides."""
    from botocore.exceptions import ClientError

    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if status in (403, 404):
            return False
        raise s3_failure(exc, "HeadObject(result)") from None
    except Exception as exc:  # noqa: BLE001 - botocore's own errors, mapped
        raise s3_failure(exc, "HeadObject(result)") from None


def failure(result_code: str, error: str, detail: str | None = None) -> TaskFailure:
    return TaskFailure(result_code, error, S3_MESSAGES[error], detail)


def request_failure(error) -> TaskFailure:
    """An API error answer (api.RequestError: status, code, message, detail) as a task
    failure: 503 and 504 are worth a retry, the rest not."""
    code = TEMPORARY if error.status in TEMPORARY_STATUSES else PERMANENT
    return TaskFailure(code, error.code, error.message, error.detail)


def score_task(function, client, task: dict, schema: str, deadline, intake, error_for) -> Outcome:
    bucket, key, version_id = task_object(task, schema)
    if function.predictor is None:
        raise failure(TEMPORARY, "model_unavailable", function.load_error)
    if deadline.left() < TASK_OVERHEAD_S:
        raise failure(TEMPORARY, "deadline_exceeded", f"{deadline.left():.2f} s left")
    version = {"VersionId": version_id} if version_id else {}
    head = s3_call(client.head_object, "HeadObject", Bucket=bucket, Key=key, **version)
    size = int(head.get("ContentLength", 0))
    if size > MAX_IMAGE_BYTES:
        raise failure(PERMANENT, "payload_too_large", f"{size} bytes")
    etag = str(head.get("ETag", "")).strip('"')
    model_version = function.predictor.model_version
    settings = function.settings
    results_bucket = settings.results_bucket or bucket
    result_key = f"{settings.results_prefix}{model_version}/{etag}.json"
    result = f"s3://{results_bucket}/{result_key}"
    if result_exists(client, results_bucket, result_key):
        return Outcome(SUCCEEDED, {"status": ALREADY_SCORED, "result": result})

    got = s3_call(client.get_object, "GetObject", Bucket=bucket, Key=key, IfMatch=head.get("ETag", etag), **version)
    stream = got["Body"]
    try:
        data = stream.read(MAX_IMAGE_BYTES + 1)
    except Exception as exc:  # noqa: BLE001 - a dropped connection mid-body
        raise s3_failure(exc, "GetObject(body)") from None
    finally:
        stream.close()
    if len(data) > MAX_IMAGE_BYTES:
        raise failure(PERMANENT, "payload_too_large", f"{len(data)}+ bytes read")

    try:
        answer = intake(data)
    except Exception as exc:
        error = error_for(exc)
        if error is None:
            raise
        raise request_failure(error) from None
    document = {"bucket": bucket, "key": key, "version_id": head.get("VersionId") or version_id, "etag": etag,
                "size": len(data), "model_version": model_version, "prediction": answer["prediction"],
                "probabilities": answer["probabilities"]}
    scored = {"status": "scored", "prediction": answer["prediction"], "result": result}
    if "input_check" in answer:  # a model with the input check: whether the image looks like the training images
        document["input_check"] = answer["input_check"]
        scored["in_distribution"] = answer["input_check"]["in_distribution"]
    from botocore.exceptions import ClientError

    try:
        client.put_object(Bucket=results_bucket, Key=result_key, Body=json.dumps(document, indent=1).encode(),
                          ContentType="application/json", IfNoneMatch="*")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "PreconditionFailed":  # written meanwhile
            return Outcome(SUCCEEDED, {"status": ALREADY_SCORED, "result": result}, answer["prediction"])
        raise s3_failure(exc, "PutObject(result)") from None
    except Exception as exc:  # noqa: BLE001 - botocore's own errors, mapped
        raise s3_failure(exc, "PutObject(result)") from None
    return Outcome(SUCCEEDED, scored, answer["prediction"])


def result_string(summary: dict) -> str:
    text = json.dumps(summary, separators=(",", ":"), ensure_ascii=False)
    if len(text) > MAX_RESULT_STRING and "message" in summary:
        summary = {**summary, "message": summary["message"][:200]}
        text = json.dumps(summary, separators=(",", ":"), ensure_ascii=False)
    return text[:MAX_RESULT_STRING]


def request_id(context) -> str | None:
    return getattr(context, "aws_request_id", None)


def handle(function, event: dict, context, *, deadline, intake, error_for) -> dict:
    """The answer to one S3 Batch Operations invocation (never raises).

    ``function``: the api.Function (predictor, settings, telemetry); ``deadline``: its
    api.Deadline (``left()`` seconds); ``intake(image_bytes)``: the API's answer for one
    image (``prediction``, ``probabilities``), raising what the API raises;
    ``error_for(exc)``: the API's error (``status``, ``code``, ``message``, ``detail``)
    for such an exception, None for a bug."""
    started = time.perf_counter()
    schema = event.get("invocationSchemaVersion")
    tasks = event.get("tasks") if isinstance(event.get("tasks"), list) else []
    results, outcomes, client = [], [], None
    for task in tasks:
        task = task if isinstance(task, dict) else {}
        try:
            if schema not in SCHEMA_VERSIONS:
                raise TaskFailure(PERMANENT, "invalid_request", f"invocationSchemaVersion must be one of "
                                  f"{', '.join(SCHEMA_VERSIONS)}", f"schema {str(schema)[:16]!r}")
            if client is None and function.predictor is not None:
                client = s3_client(function)
            outcome = score_task(function, client, task, schema, deadline, intake, error_for)
        except TaskFailure as refused:
            outcome = Outcome(refused.result_code, {"error": refused.error, "message": refused.message},
                              error=refused.error, detail=refused.detail)
        except Exception as exc:  # a bug of ours: logged, the task failed, the others go on
            function.telemetry.log("ERROR", "unhandled error", request_id=request_id(context),
                                   exception=type(exc).__name__, traceback=traceback.format_exc())
            outcome = Outcome(PERMANENT, {"error": "internal_error", "message": S3_MESSAGES["internal_error"]},
                              error="internal_error")
        outcomes.append(outcome)
        task_id = task.get("taskId")
        results.append({"taskId": task_id if isinstance(task_id, str) else str(task_id),
                        "resultCode": outcome.result_code, "resultString": result_string(outcome.summary)})
        if outcome.result_code != SUCCEEDED:
            function.telemetry.log("WARNING" if outcome.result_code == TEMPORARY else "INFO", "s3 batch task",
                                   request_id=request_id(context), task_id=str(task_id)[:128],
                                   result_code=outcome.result_code, error=outcome.error, error_detail=outcome.detail)
    latency_ms = (time.perf_counter() - started) * 1000
    job = event.get("job") if isinstance(event.get("job"), dict) else {}
    counts = {code: sum(o.result_code == code for o in outcomes) for code in RESULT_CODES}
    predictions = [o.prediction for o in outcomes if o.prediction]
    errors = [o.error for o in outcomes if o.error]
    function.telemetry.log(
        "INFO", "request", request_id=request_id(context), event=ROUTE, route=ROUTE,
        status=200, latency_ms=round(latency_ms, 2), schema=str(schema)[:16], job_id=str(job.get("id"))[:128],
        tasks=len(tasks), succeeded=counts[SUCCEEDED], temporary_failures=counts[TEMPORARY],
        permanent_failures=counts[PERMANENT], predictions=predictions or None, error=errors[0] if errors else None)
    function.telemetry.emit_request_metrics(ROUTE, 200, latency_ms, predictions, errors[0] if errors else None,
                                            request_id(context))
    return {"invocationSchemaVersion": schema, "treatMissingKeysAs": PERMANENT,
            "invocationId": event.get("invocationId"), "results": results}
