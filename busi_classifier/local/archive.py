"""`python -m busi_classifier archive`: classify every image under an S3 prefix with the
deployed function through S3 Batch Operations (docs/archive.md).

    archive submit --bucket B --prefix P --function ARN --role ARN   list, upload a manifest, create the job
    archive status JOB                                                the job's state and counts
    archive results JOB --out results.csv                             the completion report + the results, one table

The function (template.yaml, ``SourceBucketName``) answers each task and writes one JSON
result per image to ``{RESULTS_PREFIX}{model_version}/{etag}.json``; this module only
builds the job and reads what the job and the function wrote. boto3 is imported only
inside ``main`` (the commands); the functions below take the clients as arguments.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, unquote_plus

DEFAULT_RESULTS_PREFIX = "busi-results/"  # template.yaml ResultsPrefix, the function's RESULTS_PREFIX
DEFAULT_BATCH_PREFIX = "busi-batch/"  # template.yaml BatchPrefix: manifests/ and reports/ under it
USER_ARGUMENTS = {"source": "busi-classifier"}  # passed to the function in every schema 2.0 task event
INVOCATION_SCHEMA_VERSION = "2.0"
MANIFEST_FORMAT = "S3BatchOperations_CSV_20180820"
REPORT_FORMAT = "Report_CSV_20180820"
GENERATED_MANIFEST_FORMAT = "S3InventoryReport_CSV_20211130"
# Columns of a completion report's CSV files (no header row), as the S3 User Guide's
# "Examples: S3 Batch Operations completion reports" lists them.
REPORT_SCHEMA = ("Bucket", "Key", "VersionId", "TaskStatus", "ErrorCode", "HTTPStatusCode", "ResultMessage")
TABLE_COLUMNS = ("key", "version_id", "status", "prediction", "probabilities", "model_version", "result", "error")
FETCH_THREADS = 16


class ArchiveError(Exception):
    """A mistake or a state the user can fix (nothing to classify, no report yet)."""


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class S3Object:
    key: str
    version_id: str | None = None


def list_images(s3, bucket: str, prefix: str, exclude: Iterable[str] = ()) -> list[S3Object]:
    """The objects under ``s3://bucket/prefix`` to classify: the current version of each
    (with its version id where the bucket is versioned), without "folder" markers and
    without anything under ``exclude`` (the results and batch prefixes, which can lie
    inside the source prefix when results are written beside the images)."""
    skip = tuple(p for p in exclude if p)
    versioned = s3.get_bucket_versioning(Bucket=bucket).get("Status") in ("Enabled", "Suspended")
    found: list[S3Object] = []
    if versioned:
        pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix)
        entries = ((v["Key"], v["VersionId"]) for page in pages for v in page.get("Versions", ()) if v["IsLatest"])
    else:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        entries = ((o["Key"], None) for page in pages for o in page.get("Contents", ()))
    for key, version in entries:
        if key.endswith("/") or (skip and key.startswith(skip)):
            continue
        found.append(S3Object(key, version))  # "null": an object written while versioning was off
    return sorted(found, key=lambda o: o.key)


def manifest_csv(bucket: str, objects: Iterable[S3Object]) -> bytes:
    """A Batch Operations CSV manifest: ``bucket,key[,versionId]`` per line, no header, keys
    URL-encoded (form encoding, ``/`` kept), as the S3 User Guide requires; a versioned
    listing gives every row a version id (the format takes one field list for all rows)."""
    objects = list(objects)
    with_versions = any(o.version_id for o in objects)
    lines = []
    for o in objects:
        row = [bucket, quote_plus(o.key, safe="/")]
        if with_versions:
            row.append(o.version_id or "")
        lines.append(",".join(row))
    return ("\n".join(lines) + "\n").encode() if lines else b""


def manifest_fields(body: bytes) -> list[str]:
    first = body.split(b"\n", 1)[0]
    return ["Bucket", "Key", "VersionId"] if first.count(b",") == 2 else ["Bucket", "Key"]


def manifest_key(batch_prefix: str, body: bytes) -> str:
    """Named by its content: the same listing uploads to the same key (a rerun adds nothing)."""
    return f"{batch_prefix}manifests/{hashlib.sha256(body).hexdigest()[:32]}.csv"


def request_token(**inputs: Any) -> str:
    """ClientRequestToken (at most 64 characters) from everything that defines the job:
    the same request made twice (a retry after a timeout) creates one job."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _arn(partition: str, bucket: str, key: str | None = None) -> str:
    return f"arn:{partition}:s3:::{bucket}" + (f"/{key}" if key is not None else "")


def _partition(function_arn: str) -> str:
    parts = function_arn.split(":")
    return parts[1] if len(parts) > 2 and parts[0] == "arn" else "aws"


# --------------------------------------------------------------------------- submit


@dataclass(frozen=True)
class Submission:
    request: dict  # the create_job arguments
    objects: int | None  # tasks in the uploaded manifest; None for a generated manifest
    manifest: str | None  # s3:// URI of the uploaded manifest
    report: str  # s3:// prefix the job writes its completion report under (job-<id>/ below it)


def prepare_job(s3, account: str, bucket: str, prefix: str, function_arn: str, role_arn: str,
                report_bucket: str | None = None, batch_prefix: str = DEFAULT_BATCH_PREFIX,
                results_prefix: str = DEFAULT_RESULTS_PREFIX, generated_manifest: bool = False,
                priority: int = 10, token: str | None = None, upload: bool = True) -> Submission:
    """The create_job request for classifying ``s3://bucket/prefix``, with the manifest
    listed and (``upload``) uploaded to ``report_bucket`` under ``batch_prefix``manifests/,
    or, with ``generated_manifest``, S3's own manifest generator with a prefix filter.

    Args:
        s3: a boto3 S3 client.
        account: the AWS account id the job belongs to.
        bucket, prefix: where the images are (the template's SourceBucketName, SourcePrefix).
        function_arn: the classifier function (stack output FunctionArn).
        role_arn: the role Batch Operations assumes (stack output BatchOperationsRoleArn).
        report_bucket: bucket of the manifest and the completion report; default ``bucket``
            (the template's default when ResultsBucketName is empty).
        batch_prefix: the template's BatchPrefix (its role may read manifests/ and write reports/ there).
        results_prefix: the function's RESULTS_PREFIX, left out of the listing.
        generated_manifest: let S3 list the prefix (no listing or upload here).
        priority: the job's priority (higher runs first among the account's jobs).
        token: ClientRequestToken; default: derived from all the inputs and the manifest's content.
        upload: False for --dry-run: list and build, write nothing.

    Returns:
        the request and where things are; raises ArchiveError when the prefix holds nothing.
    """
    report_bucket = report_bucket or bucket
    partition = _partition(function_arn)
    report_prefix = f"{batch_prefix}reports"
    operation = {"LambdaInvoke": {"FunctionArn": function_arn, "InvocationSchemaVersion": INVOCATION_SCHEMA_VERSION,
                                  "UserArguments": dict(USER_ARGUMENTS)}}
    request: dict[str, Any] = {
        "AccountId": account,
        "ConfirmationRequired": False,
        "Operation": operation,
        "Report": {"Bucket": _arn(partition, report_bucket), "Format": REPORT_FORMAT, "Enabled": True,
                   "Prefix": report_prefix, "ReportScope": "AllTasks"},
        "Priority": priority,
        "RoleArn": role_arn,
        "Description": f"busi-classifier s3://{bucket}/{prefix}"[:256],
    }
    identity = {"account": account, "bucket": bucket, "prefix": prefix, "function": function_arn, "role": role_arn,
                "report_bucket": report_bucket, "batch_prefix": batch_prefix, "priority": priority}
    if generated_manifest:
        generator: dict[str, Any] = {
            "ExpectedBucketOwner": account,
            "SourceBucket": _arn(partition, bucket),
            "EnableManifestOutput": True,
            "ManifestOutputLocation": {"ExpectedManifestBucketOwner": account,
                                       "Bucket": _arn(partition, report_bucket),
                                       "ManifestPrefix": f"{batch_prefix}manifests",
                                       "ManifestFormat": GENERATED_MANIFEST_FORMAT},
        }
        if prefix:
            generator["Filter"] = {"KeyNameConstraint": {"MatchAnyPrefix": [prefix]}}
        request["ManifestGenerator"] = {"S3JobManifestGenerator": generator}
        request["ClientRequestToken"] = token or request_token(generated=True, **identity)
        return Submission(request, None, None, f"s3://{report_bucket}/{report_prefix}/")

    objects = list_images(s3, bucket, prefix, exclude=(results_prefix, batch_prefix))
    if not objects:
        raise ArchiveError(f"no objects under s3://{bucket}/{prefix} (results and batch prefixes left out)")
    body = manifest_csv(bucket, objects)
    key = manifest_key(batch_prefix, body)
    if upload:
        etag = s3.put_object(Bucket=report_bucket, Key=key, Body=body, ContentType="text/csv")["ETag"].strip('"')
    else:
        etag = hashlib.md5(body).hexdigest()  # what S3 answers for a single-part upload without SSE-KMS
    request["Manifest"] = {"Spec": {"Format": MANIFEST_FORMAT, "Fields": manifest_fields(body)},
                           "Location": {"ObjectArn": _arn(partition, report_bucket, key), "ETag": etag}}
    request["ClientRequestToken"] = token or request_token(manifest=hashlib.sha256(body).hexdigest(), **identity)
    return Submission(request, len(objects), f"s3://{report_bucket}/{key}", f"s3://{report_bucket}/{report_prefix}/")


# --------------------------------------------------------------------------- status


def job_summary(s3control, account: str, job_id: str) -> dict:
    """describe_job reduced to what a person watches: status, counts, failure reasons,
    where the completion report goes."""
    job = s3control.describe_job(AccountId=account, JobId=job_id)["Job"]
    progress = job.get("ProgressSummary", {})
    report = job.get("Report", {})
    total = progress.get("TotalNumberOfTasks")
    done = progress.get("NumberOfTasksSucceeded", 0) + progress.get("NumberOfTasksFailed", 0)
    return {
        "job_id": job["JobId"],
        "status": job["Status"],
        "status_reason": job.get("StatusUpdateReason"),
        "total": total,
        "succeeded": progress.get("NumberOfTasksSucceeded", 0),
        "failed": progress.get("NumberOfTasksFailed", 0),
        "percent": round(100.0 * done / total, 1) if total else None,
        "elapsed_s": progress.get("Timers", {}).get("ElapsedTimeInActiveSeconds"),
        "failure_reasons": [f"{r.get('FailureCode', '')}: {r.get('FailureReason', '')}".strip(": ")
                            for r in job.get("FailureReasons", ())],
        "report_bucket": report.get("Bucket", "").rsplit(":", 1)[-1] or None,
        "report_prefix": report.get("Prefix", ""),
    }


def status_text(summary: dict) -> str:
    lines = [f"job {summary['job_id']}: {summary['status']}"
             + (f" ({summary['status_reason']})" if summary["status_reason"] else "")]
    if summary["total"] is not None:
        lines.append(f"tasks: {summary['total']} total, {summary['succeeded']} succeeded, {summary['failed']} failed"
                     + (f" ({summary['percent']} % done)" if summary["percent"] is not None else ""))
    if summary["elapsed_s"] is not None:
        lines.append(f"active for {summary['elapsed_s']} s")
    lines += [f"failure: {reason}" for reason in summary["failure_reasons"]]
    if summary["report_bucket"]:
        lines.append(f"report: {report_location(summary)}")
    return "\n".join(lines)


def report_location(summary: dict) -> str:
    prefix = summary["report_prefix"].rstrip("/")
    return f"s3://{summary['report_bucket']}/{prefix + '/' if prefix else ''}job-{summary['job_id']}/"


# --------------------------------------------------------------------------- results


def report_rows(s3, bucket: str, prefix: str, job_id: str) -> list[dict]:
    """Every task of a completion report: the report's ``manifest.json`` names its CSV
    files (one row per task, REPORT_SCHEMA, no header). Keys are URL-decoded (they are as
    the manifest spelled them). Raises ArchiveError when there is no report (yet)."""
    prefix = prefix.rstrip("/")
    top = f"{prefix + '/' if prefix else ''}job-{job_id}/manifest.json"
    try:
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=top)["Body"].read())
    except s3.exceptions.NoSuchKey:
        raise ArchiveError(f"no completion report at s3://{bucket}/{top} (yet): S3 writes it when the job ends; "
                           f"`archive status {job_id}` says where the job is") from None
    if manifest.get("Format") != REPORT_FORMAT:
        raise ArchiveError(f"s3://{bucket}/{top}: report format {manifest.get('Format')!r}, expected {REPORT_FORMAT}")
    rows = []
    for part in manifest.get("Results", ()):
        text = s3.get_object(Bucket=part["Bucket"], Key=part["Key"])["Body"].read().decode("utf-8")
        for fields in csv.reader(io.StringIO(text)):
            if fields:
                rows.append(_report_row(fields))
    return rows


def _report_row(fields: list[str]) -> dict:
    fields = (fields + [""] * len(REPORT_SCHEMA))[: len(REPORT_SCHEMA)]
    bucket, key, version, task_status, fifth, sixth, message = fields
    # the documented schema names column 5 ErrorCode and 6 HTTPStatusCode, while the
    # documented example rows carry the HTTP status in 5 and the result code in 6:
    # whichever is a number is the HTTP status
    http, code = (fifth, sixth) if fifth.isdigit() or not sixth.isdigit() else (sixth, fifth)
    return {"bucket": bucket, "key": unquote_plus(key), "version_id": version or None,
            "task_status": task_status, "http_status": http, "result_code": code, "message": message}


def _parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ValueError(f"not an s3:// object URI: {uri!r}")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


def results_table(s3, rows: list[dict], threads: int = FETCH_THREADS) -> list[dict]:
    """One row per task: the report's status, and for a succeeded task the result object
    its resultString points at (``{"prediction", "result": "s3://..."}``) read for the
    probabilities; a failed task carries its result code and message as the error."""

    def one(row: dict) -> dict:
        out = {"key": row["key"], "version_id": row["version_id"] or "", "status": row["task_status"],
               "prediction": "", "probabilities": "", "model_version": "", "result": "", "error": ""}
        if row["task_status"] != "succeeded":
            out["error"] = failure_text(row["result_code"] or "failed", row["message"])
            return out
        try:
            answer = json.loads(row["message"])
            out["prediction"] = answer.get("prediction", "")
            out["result"] = answer["result"]
            bucket, key = _parse_s3_uri(answer["result"])
            result = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except Exception as exc:  # a truncated resultString, a result deleted since: say so in the row
            out["error"] = f"result unreadable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            return out
        out["key"] = result.get("key") or out["key"]  # the function's own decoding of the task's key
        out["version_id"] = result.get("version_id") or out["version_id"]
        out["prediction"] = result.get("prediction", out["prediction"])
        out["probabilities"] = json.dumps(result.get("probabilities", {}), sort_keys=False)
        out["model_version"] = result.get("model_version", "")
        return out

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(one, rows))


def failure_text(result_code: str, message: str) -> str:
    """``TemporaryFailure: s3_throttled: S3 asked to slow down ...`` from a failed row: the
    function's resultString (``{"error", "message"}``) or whatever S3 wrote instead (a
    function error, a timeout)."""
    try:
        answer = json.loads(message)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and "error" in answer:
        message = f"{answer['error']}: {answer.get('message', '')}".rstrip(": ")
    return f"{result_code}: {message}" if message else result_code


def write_table(rows: Iterable[dict], out) -> None:
    writer = csv.DictWriter(out, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


def table_counts(rows: list[dict]) -> str:
    succeeded = sum(r["status"] == "succeeded" and not r["error"] for r in rows)
    return f"{len(rows)} tasks: {succeeded} with a result, {len(rows) - succeeded} failed or unreadable"


# --------------------------------------------------------------------------- command line


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and shows every option's default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.required or action.default is argparse.SUPPRESS or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


ACTIONS = ("submit", "status", "results")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m busi_classifier archive", formatter_class=_HelpFormatter,
        description="Classify every image under an S3 prefix with the deployed function, through S3 Batch\n"
                    "Operations (docs/archive.md): submit the job, watch it, read its results into one table.",
        epilog="examples:\n"
               "  python -m busi_classifier archive submit --bucket scans --prefix 2024/ --function FUNCTION_ARN "
               "--role ROLE_ARN\n"
               "  python -m busi_classifier archive status JOB_ID\n"
               "  python -m busi_classifier archive results JOB_ID --out results.csv\n"
               "FUNCTION_ARN and ROLE_ARN are the stack outputs FunctionArn and BatchOperationsRoleArn.")
    p.add_argument("action", choices=ACTIONS, help="submit a job, show a job's status, or fetch its results")
    p.add_argument("job", nargs="?", help="the job id (status, results; submit prints it)")
    p.add_argument("--bucket", help="submit, required there (no default): the bucket of the images (the stack's "
                   "SourceBucketName)")
    p.add_argument("--prefix", default="", help="submit: key prefix of the images, within the stack's SourcePrefix (default: the "
                   "whole bucket)")
    p.add_argument("--function", help="submit, required there (no default): ARN of the classifier function (stack "
                   "output FunctionArn)")
    p.add_argument("--role", help="submit, required there (no default): ARN of the role Batch Operations assumes "
                   "(stack output BatchOperationsRoleArn)")
    p.add_argument("--report-bucket", default=None, help="submit: bucket for the manifest and the completion report "
                   "(stack output ResultsBucket); default: --bucket")
    p.add_argument("--batch-prefix", default=DEFAULT_BATCH_PREFIX,
                   help="submit: the stack's BatchPrefix (manifests/ and reports/ under it)")
    p.add_argument("--results-prefix", default=DEFAULT_RESULTS_PREFIX,
                   help="submit: the stack's ResultsPrefix, left out of the listing")
    p.add_argument("--generated-manifest", action="store_true",
                   help="submit: let S3 list the prefix (manifest generator) instead of listing and uploading here")
    p.add_argument("--priority", type=int, default=10, help="submit: job priority (higher runs first)")
    p.add_argument("--token", default=None, help="submit: ClientRequestToken; default: derived from the inputs and "
                   "the listing, so a retry of the same submit never creates a second job")
    p.add_argument("--dry-run", action="store_true",
                   help="submit: list and print the create_job request; upload and create nothing")
    p.add_argument("--out", default="results.csv", help="results: the CSV table to write ('-': standard output)")
    p.add_argument("--json", action="store_true", help="status, submit: print JSON instead of text")
    p.add_argument("--region", default=None, help="AWS region of the job and the buckets (default: the AWS "
                   "configuration's, e.g. AWS_REGION)")
    return p


@dataclass
class Clients:
    s3: Any
    s3control: Any
    sts: Any


def make_clients(region: str | None) -> Clients:
    import boto3

    session = boto3.session.Session(region_name=region)
    if not session.region_name:
        raise ArchiveError("no AWS region: pass --region or set AWS_REGION (the region of the buckets and the job)")
    return Clients(s3=session.client("s3"), s3control=session.client("s3control"), sts=session.client("sts"))


def main(argv: list[str] | None = None, clients: Clients | None = None) -> int:
    """The ``archive`` command. ``clients`` (boto3 clients) replaces the ones built from the
    AWS configuration: what the tests pass."""
    p = parser()
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.action == "submit":
        missing = [f"--{name}" for name in ("bucket", "function", "role") if not getattr(args, name)]
        if missing:
            p.error(f"submit needs {', '.join(missing)}")
        if args.job:
            p.error("submit takes no job id")
    elif not args.job:
        p.error(f"{args.action} needs the job id: archive {args.action} JOB_ID")
    for name in ("batch_prefix", "results_prefix"):
        if not getattr(args, name).endswith("/"):
            p.error(f"--{name.replace('_', '-')} must end in '/'")

    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        print("error: the archive command needs boto3: pip install boto3", file=sys.stderr)
        return 1
    try:
        clients = clients or make_clients(args.region)
        account = clients.sts.get_caller_identity()["Account"]
        return {"submit": _submit, "status": _status, "results": _results}[args.action](args, clients, account)
    except ArchiveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ClientError, BotoCoreError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1


def _submit(args, clients: Clients, account: str) -> int:
    submission = prepare_job(clients.s3, account, args.bucket, args.prefix, args.function, args.role,
                             report_bucket=args.report_bucket, batch_prefix=args.batch_prefix,
                             results_prefix=args.results_prefix, generated_manifest=args.generated_manifest,
                             priority=args.priority, token=args.token, upload=not args.dry_run)
    what = (f"{submission.objects} objects, manifest {submission.manifest}" if submission.objects is not None
            else f"manifest generated by S3 from s3://{args.bucket}/{args.prefix}")
    if args.dry_run:
        print(json.dumps(submission.request, indent=2))
        print(f"dry run: {what} (not uploaded), no job created", file=sys.stderr)
        return 0
    job_id = clients.s3control.create_job(**submission.request)["JobId"]
    if args.json:
        print(json.dumps({"job_id": job_id, "objects": submission.objects, "manifest": submission.manifest,
                          "report": f"{submission.report}job-{job_id}/",
                          "token": submission.request["ClientRequestToken"]}))
    else:
        print(f"job {job_id} created: {what}; report under {submission.report}job-{job_id}/")
        print(f"watch it: python -m busi_classifier archive status {job_id}")
    return 0


def _status(args, clients: Clients, account: str) -> int:
    summary = job_summary(clients.s3control, account, args.job)
    print(json.dumps(summary) if args.json else status_text(summary))
    return 0


def _results(args, clients: Clients, account: str) -> int:
    summary = job_summary(clients.s3control, account, args.job)
    if not summary["report_bucket"]:
        raise ArchiveError(f"job {args.job} has no completion report configured")
    rows = results_table(clients.s3, report_rows(clients.s3, summary["report_bucket"], summary["report_prefix"],
                                                 args.job))
    if args.out == "-":
        write_table(rows, sys.stdout)
    else:
        with open(args.out, "w", newline="", encoding="utf-8") as out:
            write_table(rows, out)
    print(f"job {args.job} ({summary['status']}): {table_counts(rows)}"
          + ("" if args.out == "-" else f" -> {args.out}"), file=sys.stderr)
    return 0


def iter_table(path) -> Iterator[dict]:
    """The rows of a table ``archive results`` wrote (probabilities parsed back)."""
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            row["probabilities"] = json.loads(row["probabilities"]) if row["probabilities"] else {}
            yield row
