"""The container as users run it, under the real AWS Lambda Runtime Interface Emulator.

README's flow is `docker build`, `docker run -p 9000:8080 IMAGE` (the base image's
entrypoint starts `aws-lambda-rie python -m awslambdaric lambda_function.lambda_handler`)
and `python test.py IMAGE`. Here the image's task root is laid out from the Dockerfile
itself (tests/container_layout.py), with a clean venv of exactly requirements.txt, and
the same emulator binary runs it on loopback ports: every sample event, test.py, bad
input, a missing model and a function timeout, all over HTTP.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, synthetic_images
from container_layout import RIE, RIE_MISSING, Emulator, LayoutError, build_image, cached_serving_venv

from busi_classifier.serving.constants import CLASSES
from busi_classifier.serving.events import direct_event, http_v2_event, rest_v1_event

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not RIE.is_file(), reason=RIE_MISSING)]
EVENTS = ROOT / "events"
TIMEOUT_S = 3  # AWS_LAMBDA_FUNCTION_TIMEOUT of the timeout test: init (model and input-check load) plus one answer fit in it on a loaded machine


@pytest.fixture(scope="session")
def serving_venv(tmp_path_factory) -> Path:
    """A clean venv holding exactly requirements.txt (what the image's pip line installs)."""
    return cached_serving_venv(tmp_path_factory.getbasetemp() / "serving-venv")


@pytest.fixture(scope="module")
def image(trained_model, tmp_path_factory):
    """The image's task root, laid out from the Dockerfile with MODEL_DIR = the trained model."""
    return build_image(tmp_path_factory.mktemp("image"), {"MODEL_DIR": str(trained_model)})


def start(serving_venv, image, tmp_path_factory, **kwargs) -> Emulator:
    env = {**image.env, **kwargs.pop("env", {})}
    emulator = Emulator(serving_venv, image.task_root, env, tmp_path_factory.mktemp("rie") / "rie.log", **kwargs)
    try:
        emulator.wait_listening()
    except Exception:
        emulator.stop()
        raise
    return emulator


@pytest.fixture(scope="module")
def emulator(serving_venv, image, tmp_path_factory):
    """The function as `docker run -p 9000:8080 IMAGE` starts it (on free loopback ports)."""
    emulator = start(serving_venv, image, tmp_path_factory)
    yield emulator
    emulator.stop()
    assert not [pid for pid in emulator.runtime_pids() if Path(f"/proc/{pid}").exists()]


def promised_answers() -> dict[str, tuple[int | None, str]]:
    """file -> (HTTP status through API Gateway, None for a direct invocation; what the
    body holds), read from the table of events/README.md."""
    promised = {}
    for line in (EVENTS / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not re.fullmatch(r"`[\w.-]+\.json`", cells[0]):
            continue
        answer = cells[2]
        status = re.search(r"\b([2-5]\d\d)\b", answer)
        # an error code is named in backticks; a 200 answer may name fields the same way ("with its `lesion`")
        answered = answer.startswith(("200", "prediction", "two predictions"))
        code = None if answered else re.search(r"`(\w+)`", answer)
        kind = (code.group(1) if code else "predictions" if "predictions" in answer
                else "health" if "status ok" in answer else "prediction")
        promised[cells[0].strip("`")] = (int(status.group(1)) if status else None, kind)
    return promised


def body_of(answer: dict) -> dict:
    return json.loads(answer["body"]) if "statusCode" in answer else answer


def assert_input_check(result: dict) -> None:
    """Every prediction of the exported model carries its input check (issue 21)."""
    check = result["input_check"]
    assert set(check) == {"score", "threshold", "in_distribution"} and isinstance(check["in_distribution"], bool)
    assert check["in_distribution"] is (check["score"] is not None and check["score"] <= check["threshold"])


def test_task_root_is_what_the_dockerfile_builds(image, trained_model):
    root = image.task_root
    assert image.handler == "lambda_function.lambda_handler"
    assert (root / "lambda_function.py").read_bytes() == (ROOT / "lambda_function.py").read_bytes()
    served = sorted(p.name for p in (ROOT / "busi_classifier" / "serving").glob("*.py"))
    assert sorted(p.name for p in (root / "busi_classifier" / "serving").glob("*.py")) == served
    assert not list(root.rglob("__pycache__")), ".dockerignore keeps bytecode out of the image"
    assert not (root / "busi_classifier" / "training").exists() and not (root / "train.py").exists()
    assert [r.read_text() for r in image.requirements] == [(ROOT / "requirements.txt").read_text()]
    # the default image carries model.json, only the variant it serves and the input check's file
    card = json.loads((trained_model / "model.json").read_text())
    default_file = card["variants"][card["default_variant"]]["file"]
    assert card["input_check"] is not None, "the export fits an input check (issue 21)"
    check_file = card["input_check"]["file"]
    assert sorted(p.name for p in (root / "model").iterdir()) == sorted(["model.json", default_file, check_file])
    assert (root / "model" / check_file).read_bytes() == (trained_model / check_file).read_bytes()
    assert (root / "model" / "model.json").read_bytes() == (trained_model / "model.json").read_bytes()
    assert image.env["MODEL_PATH"] == str(root / "model")


def test_extra_variants_build_argument_adds_variants(trained_model, tmp_path):
    card = json.loads((trained_model / "model.json").read_text())
    everything = build_image(tmp_path / "all", {"MODEL_DIR": str(trained_model), "EXTRA_VARIANTS": "all"})
    check_file = card["input_check"]["file"]
    assert sorted(p.name for p in (everything.task_root / "model").iterdir()) == sorted(
        ["model.json", check_file, *{v["file"] for v in card["variants"].values()}])
    other = next(name for name in card["variants"] if name != card["default_variant"])
    two = build_image(tmp_path / "two", {"MODEL_DIR": str(trained_model), "EXTRA_VARIANTS": other})
    assert {p.name for p in (two.task_root / "model").iterdir()} == {
        "model.json", check_file, card["variants"][card["default_variant"]]["file"], card["variants"][other]["file"]}
    with pytest.raises(LayoutError, match="EXTRA_VARIANTS names float64, not in model.json"):
        build_image(tmp_path / "typo", {"MODEL_DIR": str(trained_model), "EXTRA_VARIANTS": "float64"})


def test_select_model_script_fails_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "docker" / "select_model.py"), str(tmp_path / "none"),
                             str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "no model.json" in result.stderr


def test_events_readme_promises_an_answer_for_every_file():
    assert sorted(promised_answers()) == sorted(p.name for p in EVENTS.glob("*.json"))


@pytest.mark.parametrize("name", sorted(p.name for p in EVENTS.glob("*.json")))
def test_sample_event_through_the_emulator(emulator, name):
    status, kind = promised_answers()[name]
    answer = emulator.invoke_json((EVENTS / name).read_bytes())
    if status is None:
        assert "statusCode" not in answer
    else:
        assert answer["statusCode"] == status and answer["headers"]["Content-Type"] == "application/json"
    body = body_of(answer)
    if kind == "prediction":
        assert body["prediction"] in CLASSES and list(body["probabilities"]) == list(CLASSES)
        assert_input_check(body)
    elif kind == "predictions":
        assert [p["prediction"] in CLASSES for p in body["predictions"]] == [True, True]
        for prediction in body["predictions"]:
            assert_input_check(prediction)
    elif kind == "health":
        assert body["status"] == "ok" and body["classes"] == list(CLASSES)
        assert body["model"]["input_check"]["available"] is True and body["model"]["input_check"]["action"] == "flag"
    elif kind == "lesion":  # the session model is multitask: a segment request gets its outline
        assert body["prediction"] in CLASSES and {"found", "area_fraction", "outline", "mask_png"} <= set(body["lesion"])
    else:
        assert body["error"]["code"] == kind


def test_test_py_against_the_emulator(emulator, synthetic_dir, tmp_path):
    """`python test.py IMAGE` as README says, pointed at this emulator's port."""
    _, png = synthetic_images(synthetic_dir, 1)[0]
    (tmp_path / "scan.png").write_bytes(png)
    (tmp_path / "notes.txt").write_text("not an image")
    command = [sys.executable, "test.py", "--endpoint", emulator.url, "--timeout", "60"]
    good = subprocess.run([*command, str(tmp_path / "scan.png")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stdout + good.stderr
    answer = json.loads(good.stdout)
    assert answer["prediction"] in CLASSES and set(answer["probabilities"]) == set(CLASSES)
    assert_input_check(answer)
    # test.py warns on stderr exactly when the check flagged the image
    assert ("warning: this image does not look like" in good.stderr) is (not answer["input_check"]["in_distribution"])
    bad = subprocess.run([*command, str(tmp_path / "notes.txt")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "invalid_image" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr


def test_bad_input_gets_client_errors_and_the_function_lives_on(emulator, synthetic_dir):
    pids = emulator.runtime_pids()
    cases = [
        ({"image": "!!! not base64 !!!"}, "invalid_base64"),
        ({}, "missing_image"),
        ({"image": "aGVsbG8="}, "invalid_image"),
        ({"images": []}, "invalid_request"),
        (rest_v1_event("POST", "/predict", raw=b"GIF89a broken"), "invalid_image"),
        (http_v2_event("DELETE", "/predict"), "method_not_allowed"),
        (http_v2_event("GET", "/nowhere"), "not_found"),
    ]
    for event, code in cases:
        assert body_of(emulator.invoke_json(event))["error"]["code"] == code, event
    # a body that is not JSON never reaches the handler: the runtime answers for it
    status, raw = emulator.invoke(b"this is not json")
    assert status == 200 and json.loads(raw)["errorType"] == "Runtime.UnmarshalError"
    _, png = synthetic_images(synthetic_dir, 1)[0]
    assert emulator.invoke_json(direct_event(png))["prediction"] in CLASSES
    assert emulator.runtime_pids() == pids, "the runtime was restarted"
    errors = [r for r in emulator.log_records() if r.get("level") == "ERROR"]
    assert errors == [], errors
    # one traceback in the log: the runtime's own report of the UnmarshalError, none of the handler's
    assert emulator.log().count("Traceback") == 1


def test_one_init_and_its_log(emulator):
    """The model is loaded once, at init, not per request (the emulator starts the runtime
    at the first invocation)."""
    assert emulator.invoke_json(rest_v1_event("GET", "/health"))["statusCode"] == 200
    log = emulator.log()
    assert log.count("Starting runtime domain") == 1, log[-3000:]
    initialised = [r for r in emulator.log_records() if r.get("message") == "function initialised"]
    assert len(initialised) <= 1
    if initialised and "model_load_ms" in initialised[0]:
        assert initialised[0]["model_load_ms"] > 0
    assert emulator.durations_ms(), "the emulator writes a REPORT line with Duration per request"


def test_missing_model_answers_503_and_the_runtime_keeps_running(serving_venv, image, tmp_path_factory, synthetic_dir):
    _, png = synthetic_images(synthetic_dir, 1)[0]
    missing = str(image.task_root / "no-such-model")
    with start(serving_venv, image, tmp_path_factory, env={"MODEL_PATH": missing}) as emulator:
        answers = [emulator.invoke_json(rest_v1_event("GET", "/health")),
                   emulator.invoke_json(http_v2_event("POST", "/predict", raw=png)),
                   emulator.invoke_json(rest_v1_event("GET", "/health"))]
        pids = emulator.runtime_pids()
        direct = emulator.invoke_json(direct_event(png))
        assert [a["statusCode"] for a in answers] == [503, 503, 503]
        assert {body_of(a)["error"]["code"] for a in answers} == {"model_unavailable"}
        assert direct["error"]["code"] == "model_unavailable"
        assert missing not in json.dumps([answers, direct]), "the answer names a server path"
        assert emulator.runtime_pids() == pids and emulator.process.poll() is None
        log = emulator.log()
        assert log.count("Starting runtime domain") == 1, "the runtime was restarted (a crash loop)"
        not_loaded = [r for r in emulator.log_records()
                      if r.get("message") in ("model not loaded", "function not initialised")]
        assert len(not_loaded) == 1 and "no-such-model" in not_loaded[0]["reason"]
        assert "Traceback" not in log


def noise_png(seed: int = 0) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (180, 240, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def test_ood_action_refuse_through_the_emulator(serving_venv, image, emulator, tmp_path_factory, synthetic_dir):
    """The same images through the default function (flag) and one started with
    OOD_ACTION=refuse: a flagged image is answered 422 out_of_distribution there, every other
    one as before; /health says the action."""
    masks = [sorted((synthetic_dir / label).glob("*_mask.png"))[0].read_bytes() for label in ("benign", "malignant")]
    images = [png for _, png in synthetic_images(synthetic_dir, 1)] + [noise_png(0), noise_png(1)] + masks
    flagged = []
    for png in images:
        answer = emulator.invoke_json(direct_event(png))
        assert_input_check(answer)
        flagged.append(not answer["input_check"]["in_distribution"])
    with start(serving_venv, image, tmp_path_factory, env={"OOD_ACTION": "refuse"}) as refusing:
        health = body_of(refusing.invoke_json(rest_v1_event("GET", "/health")))
        assert health["model"]["input_check"]["action"] == "refuse"
        for png, was_flagged in zip(images, flagged, strict=True):
            answer = refusing.invoke_json(http_v2_event("POST", "/predict", raw=png))
            body = body_of(answer)
            if was_flagged:
                assert answer["statusCode"] == 422 and body["error"]["code"] == "out_of_distribution", body
            else:
                assert answer["statusCode"] == 200 and body["input_check"]["in_distribution"] is True, body
        assert [r for r in refusing.log_records() if r.get("level") == "ERROR"] == []
    print(f"\ninput check under the emulator: flagged {flagged} (3 synthetic scans, 2 noise images, 2 masks)")
    # the dataset's own masks (a white blob on black) are the clearest case the export measures
    assert any(flagged), "no image was flagged: the 422 was not exercised"


SLOW_HANDLER = '''
import time
from lambda_function import lambda_handler as served


def lambda_handler(event, context):
    """The real handler, after sleeping event["sleep_s"] seconds (the timeout test)."""
    time.sleep(float(event.pop("sleep_s", 0)))
    return served(event, context)
'''


def test_function_timeout_answer_and_the_next_request(serving_venv, image, tmp_path_factory, synthetic_dir):
    """AWS_LAMBDA_FUNCTION_TIMEOUT: a request that takes longer is cut by the emulator
    with its own plain-text answer; the runtime is killed and started again, so the next
    request works and pays a new init (model load) once more."""
    _, png = synthetic_images(synthetic_dir, 1)[0]
    (image.task_root / "slow_lambda.py").write_text(SLOW_HANDLER)
    try:
        with start(serving_venv, image, tmp_path_factory, handler="slow_lambda.lambda_handler",
                   env={"AWS_LAMBDA_FUNCTION_TIMEOUT": str(TIMEOUT_S)}) as emulator:
            assert emulator.invoke_json(direct_event(png))["prediction"] in CLASSES  # init done
            first = emulator.runtime_pids()
            started = time.monotonic()
            status, raw = emulator.invoke({**direct_event(png), "sleep_s": 3 * TIMEOUT_S}, timeout=30)
            waited = time.monotonic() - started
            assert status == 200 and raw == f"Task timed out after {TIMEOUT_S:.2f} seconds".encode()
            assert TIMEOUT_S * 0.9 <= waited < 3 * TIMEOUT_S
            assert emulator.durations_ms()[-1] == pytest.approx(TIMEOUT_S * 1000, rel=0.05)
            answer = emulator.invoke_json(direct_event(png))
            assert answer["prediction"] in CLASSES
            assert emulator.runtime_pids() != first, "the timed-out runtime was not replaced"
            assert "Reset initiated: Timeout" in emulator.log()
            initialised = [r for r in emulator.log_records() if r.get("message") == "function initialised"]
            assert len(initialised) in (0, 2)  # where the function logs its init: once per runtime
    finally:
        (image.task_root / "slow_lambda.py").unlink()


def test_s3_batch_operations_events_through_the_emulator(serving_venv, image, tmp_path_factory, synthetic_dir):
    """S3 Batch Operations events of both schema versions posted to the RIE's invoke
    endpoint: the task root and the clean venv of requirements.txt (boto3 included) as the
    image has them, moto's S3 server on loopback, boto3 pointed at it by AWS_ENDPOINT_URL.
    Then the throughput of one function instance: events of BATCH_TASKS tasks each."""
    import boto3
    from moto.server import ThreadedMotoServer
    from test_s3_batch import FAKE_CREDENTIALS, REGION, batch_event, check_documented_answer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        s3 = boto3.client("s3", endpoint_url=url, region_name=REGION, aws_access_key_id="testing",
                          aws_secret_access_key="testing")
        s3.create_bucket(Bucket="busi-scans")
        images = synthetic_images(synthetic_dir, per_class=12)
        keys = [f"scans/{label} {i}/ü.png" for i, (label, _) in enumerate(images)]
        for key, (_, data) in zip(keys, images, strict=True):
            s3.put_object(Bucket="busi-scans", Key=key, Body=data)
        s3.put_object(Bucket="busi-scans", Key="scans/notes.txt", Body=b"not an image")
        env = {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": url}
        with start(serving_venv, image, tmp_path_factory, env=env) as emulator:
            first = batch_event("1.0", "busi-scans", [keys[0], "scans/notes.txt", "scans/missing.png"])
            results = check_documented_answer(emulator.invoke_json(first), first)
            assert [r["resultCode"] for r in results] == ["Succeeded", "PermanentFailure", "PermanentFailure"]
            assert results[0]["resultString"]["prediction"] in CLASSES
            assert [r["resultString"].get("error") for r in results[1:]] == ["invalid_image", "s3_not_found"]
            second = batch_event("2.0", "busi-scans", [keys[0], keys[1]])
            results = check_documented_answer(emulator.invoke_json(second), second)
            assert [r["resultCode"] for r in results] == ["Succeeded", "Succeeded"]
            assert [r["resultString"]["status"] for r in results] == ["already scored", "scored"]
            written = s3.list_objects_v2(Bucket="busi-scans", Prefix="busi-results/")["Contents"]
            assert len(written) == 2
            document = json.loads(s3.get_object(Bucket="busi-scans", Key=written[0]["Key"])["Body"].read())
            assert document["prediction"] in CLASSES and document["key"] in keys[:2]

            # one instance's throughput: the images not scored yet, BATCH_TASKS per event
            rest, batch_tasks = keys[2:], 8
            started = time.perf_counter()
            for i in range(0, len(rest), batch_tasks):
                event = batch_event("2.0" if i % 2 else "1.0", "busi-scans", rest[i:i + batch_tasks])
                answer = check_documented_answer(emulator.invoke_json(event), event)
                assert {r["resultCode"] for r in answer} == {"Succeeded"}, answer
            elapsed = time.perf_counter() - started
            rate = len(rest) / elapsed
            print(f"\nS3 Batch under the emulator: {len(rest)} images in {elapsed:.2f} s, {batch_tasks} tasks "
                  f"per event: {rate:.1f} images/s (one function instance, moto S3 on loopback)")
            assert len(s3.list_objects_v2(Bucket="busi-scans", Prefix="busi-results/")["Contents"]) == len(keys)
            assert [r for r in emulator.log_records() if r.get("level") == "ERROR"] == []
            assert "Traceback" not in emulator.log()
    finally:
        server.stop()
