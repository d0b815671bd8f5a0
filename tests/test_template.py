"""template.yaml (AWS SAM): cfn-lint passes, and the SAM transform (aws-sam-translator,
offline) turns it into the API the README describes: routes, binary media types, CORS,
throttling, the optional API key, the error shape of API Gateway's own refusals, the
outputs test.py --stack reads."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from busi_classifier.local.client import API_URL_OUTPUT
from busi_classifier.local.server import BINARY_MEDIA_TYPES

TEMPLATE = ROOT / "template.yaml"
TAGS = ["Ref", "Sub", "GetAtt", "If", "Equals", "Not", "And", "Or", "Join", "Select", "Split", "FindInMap",
        "ImportValue", "Base64", "GetAZs", "Condition"]


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !Sub, ...) as their long forms."""


def _tag(name: str):
    def construct(loader, node):
        key = "Ref" if name == "Ref" else f"Fn::{name}"
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
            return {key: value.split(".", 1) if name == "GetAtt" else value}
        if isinstance(node, yaml.SequenceNode):
            return {key: loader.construct_sequence(node, deep=True)}
        return {key: loader.construct_mapping(node, deep=True)}

    return construct


for _name in TAGS:
    CfnLoader.add_constructor(f"!{_name}", _tag(_name))


@pytest.fixture(scope="module")
def template() -> dict:
    return yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)


def resolve_conditions(node, conditions: dict[str, bool]):
    """What AWS::LanguageExtensions does before the SAM transform: Fn::If on a
    condition known at deploy time becomes its value."""
    if isinstance(node, dict):
        if set(node) == {"Fn::If"} and node["Fn::If"][0] in conditions:
            name, yes, no = node["Fn::If"]
            return resolve_conditions(yes if conditions[name] else no, conditions)
        return {k: resolve_conditions(v, conditions) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve_conditions(v, conditions) for v in node]
    return node


def sam_transform(template: dict, api_key: bool, monkeypatch) -> dict:
    from samtranslator.translator.transform import transform

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")  # the translator wants a region, nothing else
    sam = resolve_conditions(copy.deepcopy(template), {"UseApiKey": api_key})
    sam["Transform"] = "AWS::Serverless-2016-10-31"
    # `sam build` fills ImageUri with the image it built from Metadata.Dockerfile
    sam["Resources"]["ClassifierFunction"]["Properties"]["ImageUri"] = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/busi:latest"

    class NoManagedPolicies:
        def load(self):
            return {}

    return transform(sam, {}, NoManagedPolicies())


def of_type(cfn: dict, kind: str) -> dict:
    return {k: v for k, v in cfn["Resources"].items() if v["Type"] == kind}


def test_cfn_lint_passes():
    """cfn-lint (offline, ~1 s) with its SAM schemas: what CI runs on the template."""
    from cfnlint.api import lint_file

    matches = lint_file(TEMPLATE)
    assert [str(m) for m in matches] == []


def test_cfn_lint_catches_a_broken_template(tmp_path):
    """The lint test above would notice a mistake (it is not passing vacuously)."""
    from cfnlint.api import lint_file

    broken = tmp_path / "template.yaml"
    broken.write_text(TEMPLATE.read_text().replace("MemorySize: 1769", "MemorySize: 99999"))
    assert any("MemorySize" in str(m) or "32768" in str(m) for m in lint_file(broken))


def test_function_is_the_container_image_with_chosen_memory_and_timeout(template):
    function = template["Resources"]["ClassifierFunction"]
    assert function["Type"] == "AWS::Serverless::Function"
    properties = function["Properties"]
    assert properties["PackageType"] == "Image" and properties["Architectures"] == [{"Ref": "Architecture"}]
    assert properties["MemorySize"] == 1769 and properties["Timeout"] < 29  # under API Gateway's 29 s
    metadata = function["Metadata"]
    assert (ROOT / metadata["DockerContext"] / metadata["Dockerfile"]).is_file()
    # the comment that explains the memory cites the emulator benchmark's section, which exists
    comment = TEMPLATE.read_text().split("MemorySize:")[0].rsplit("Architectures:", 1)[1]
    section = "Cold start and cost under the Lambda emulator"
    assert "vCPU" in comment and "BENCHMARKS.md" in comment and f'"{section}"' in comment
    assert f"## {section}" in (ROOT / "BENCHMARKS.md").read_text()
    assert "benchmarks/cold_start.py" in (ROOT / "BENCHMARKS.md").read_text()


def test_architecture_parameter_feeds_the_function(template, monkeypatch):
    parameter = template["Parameters"]["Architecture"]
    assert parameter["Default"] == "x86_64" and parameter["AllowedValues"] == ["x86_64", "arm64"]
    cfn = sam_transform(template, False, monkeypatch)
    [function] = of_type(cfn, "AWS::Lambda::Function").values()
    assert function["Properties"]["Architectures"] == [{"Ref": "Architecture"}]
    assert "linux/arm64" in parameter["Description"]  # how to build the image for it


@pytest.mark.parametrize("value", ["x86_64", "arm64"])
def test_cfn_lint_accepts_each_architecture(value, tmp_path):
    """With the parameter replaced by each allowed value, the template is still valid."""
    from cfnlint.api import lint_file

    fixed = tmp_path / "template.yaml"
    fixed.write_text(TEMPLATE.read_text().replace("Architectures: [!Ref Architecture]", f"Architectures: [{value}]"))
    assert [str(m) for m in lint_file(fixed)] == []


def test_environment_variables_are_the_ones_the_code_reads(template):
    variables = template["Resources"]["ClassifierFunction"]["Properties"]["Environment"]["Variables"]
    sources = "".join(p.read_text() for p in sorted((ROOT / "busi_classifier" / "serving").glob("*.py")))
    for name in variables:
        assert f'"{name}"' in sources or name in ("LOG_LEVEL",), f"{name} is set but never read"
    assert {"CORS_ALLOW_ORIGIN", "IMAGE_URL_ALLOWLIST", "LOG_LEVEL", "METRICS_NAMESPACE"} <= set(variables)


@pytest.mark.parametrize("api_key", [False, True], ids=["no-key", "api-key"])
def test_sam_transform_gives_the_documented_api(template, monkeypatch, api_key):
    cfn = sam_transform(template, api_key, monkeypatch)
    [(api_id, api)] = of_type(cfn, "AWS::ApiGateway::RestApi").items()
    body = api["Properties"]["Body"]
    assert sorted(body["x-amazon-apigateway-binary-media-types"]) == sorted(BINARY_MEDIA_TYPES)
    paths = body["paths"]
    assert {"/predict", "/health", "/", "/{proxy+}"} <= set(paths)
    for path in ("/predict", "/health", "/{proxy+}"):
        methods = paths[path]
        integration = methods["x-amazon-apigateway-any-method"]["x-amazon-apigateway-integration"]
        assert integration["type"] == "aws_proxy" and "ClassifierFunction.Arn" in integration["uri"]["Fn::Sub"]
        assert ("security" in methods["x-amazon-apigateway-any-method"]) is api_key
        assert "options" in methods and "security" not in methods["options"]  # CORS preflight needs no key
        cors = methods["options"]["x-amazon-apigateway-integration"]["responses"]["default"]["responseParameters"]
        assert "x-api-key" in cors["method.response.header.Access-Control-Allow-Headers"].lower()
    responses = body["x-amazon-apigateway-gateway-responses"]
    assert {"INVALID_API_KEY", "THROTTLED", "REQUEST_TOO_LARGE", "DEFAULT_4XX", "DEFAULT_5XX"} <= set(responses)
    for response in responses.values():
        template_text = response["responseTemplates"]["application/json"]
        assert template_text.startswith('{"error": {"code": "') and '"message": ' in template_text
    [stage] = of_type(cfn, "AWS::ApiGateway::Stage").values()
    [setting] = stage["Properties"]["MethodSettings"]
    assert setting["ThrottlingRateLimit"] == {"Ref": "ThrottlingRateLimit"}
    assert setting["ThrottlingBurstLimit"] == {"Ref": "ThrottlingBurstLimit"}
    permissions = of_type(cfn, "AWS::Lambda::Permission")
    assert len(permissions) == 4  # API Gateway may invoke the function on each route
    keys = of_type(cfn, "AWS::ApiGateway::ApiKey")
    assert list(keys) == ["ApiKey"] and keys["ApiKey"]["Condition"] == "UseApiKey"
    [plan] = of_type(cfn, "AWS::ApiGateway::UsagePlan").values()
    assert plan["Properties"]["ApiStages"][0]["ApiId"] == {"Ref": api_id}
    [function] = of_type(cfn, "AWS::Lambda::Function").values()
    assert function["Properties"]["PackageType"] == "Image" and function["Properties"]["MemorySize"] == 1769


def test_outputs_name_the_api_and_the_function(template):
    outputs = template["Outputs"]
    assert {API_URL_OUTPUT, "FunctionName", "FunctionArn", "PredictUrl", "HealthUrl", "ApiKeyId"} <= set(outputs)
    url = outputs[API_URL_OUTPUT]["Value"]["Fn::Sub"]
    assert url.startswith("https://${ClassifierApi}.execute-api.") and url.endswith("/${StageName}")
    assert outputs["FunctionArn"]["Value"] == {"Fn::GetAtt": ["ClassifierFunction", "Arn"]}
    assert outputs["ApiKeyId"]["Condition"] == "UseApiKey"


def test_ood_action_parameter_feeds_the_setting_with_its_default(template, monkeypatch):
    """OodAction -> OOD_ACTION: the values the settings accept, the same default."""
    from busi_classifier.serving.settings import DEFAULT_OOD_ACTION, OOD_ACTIONS, ServingSettings

    parameter = template["Parameters"]["OodAction"]
    assert parameter["AllowedValues"] == list(OOD_ACTIONS) and parameter["Default"] == DEFAULT_OOD_ACTION == "flag"
    for value in parameter["AllowedValues"]:
        settings = ServingSettings.from_env({"OOD_ACTION": value})
        assert settings.errors == () and settings.ood_action == value
    cfn = sam_transform(template, False, monkeypatch)
    [function] = of_type(cfn, "AWS::Lambda::Function").values()
    assert function["Properties"]["Environment"]["Variables"]["OOD_ACTION"] == {"Ref": "OodAction"}
    assert "docs/api.md" in parameter["Description"]


@pytest.mark.parametrize("value", ["flag", "refuse"])
def test_cfn_lint_accepts_each_ood_action(value, tmp_path):
    from cfnlint.api import lint_file

    fixed = tmp_path / "template.yaml"
    fixed.write_text(TEMPLATE.read_text().replace("OOD_ACTION: !Ref OodAction", f"OOD_ACTION: {value}"))
    assert "OOD_ACTION: !Ref OodAction" in TEMPLATE.read_text()
    assert [str(m) for m in lint_file(fixed) if "OodAction" not in str(m)] == []


def test_parameters_have_safe_defaults(template):
    parameters = template["Parameters"]
    assert parameters["ApiKeyRequired"]["AllowedValues"] == ["true", "false"]
    assert parameters["ImageUrlAllowlist"]["Default"] == ""  # the url input stays off
    assert parameters["ThrottlingRateLimit"]["Default"] > 0 and parameters["ThrottlingBurstLimit"]["Default"] > 0
    assert "AWS::LanguageExtensions" in template["Transform"]  # resolves !If in Auth


def test_dockerignore_lets_sam_build_see_the_model():
    """The model folder's model.json and .tflite files and the selection script pass
    .dockerignore (sam build sends only that context to Docker); model.keras does not."""
    from container_layout import dockerignore_rules, ignored

    dockerfile = Path(ROOT / "Dockerfile").read_text()
    assert dockerfile.count("ARG MODEL_DIR=artifacts/model") == 1 and "COPY ${MODEL_DIR}/ " in dockerfile
    rules = dockerignore_rules()
    for name in ("model.json", "model.tflite", "model_float16.tflite", "model_int8_dynamic.tflite",
                 "model_int8_full.tflite", "input_check.npz"):
        assert not ignored(f"artifacts/model/{name}", rules), name
    assert not ignored("docker/select_model.py", rules)
    assert ignored("artifacts/model/model.keras", rules) and ignored("data/synthetic/benign/a.png", rules)


def test_samconfig_gives_sam_deploy_what_the_template_needs():
    import tomllib

    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    deploy = config["default"]["deploy"]["parameters"]
    assert "CAPABILITY_AUTO_EXPAND" in deploy["capabilities"]  # the LanguageExtensions transform
    assert "CAPABILITY_IAM" in deploy["capabilities"]  # SAM creates the function's role
    assert deploy["resolve_image_repos"] is True  # an ECR repository for the image
    assert config["default"]["global"]["parameters"]["stack_name"] == "busi-classifier"


# --------------------------------------------------------------------------- S3 Batch Operations (docs/archive.md)

PSEUDO = {"AWS::Partition": "aws", "AWS::AccountId": "123456789012", "AWS::StackName": "busi", "AWS::Region": "us-east-1"}
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:busi-ClassifierFunction"
BATCH_CONDITIONS = ("UseS3Batch", "HasResultsBucket", "HasReservedConcurrency")


def parameter_values(template: dict, **given: str) -> dict[str, str]:
    values = {name: str(p.get("Default", "")) for name, p in template["Parameters"].items()}
    values.update(given)
    return values


def evaluate_condition(expression, conditions: dict, values: dict) -> bool:
    """CloudFormation's condition functions (Equals, Not, Or, And, Condition) over Refs."""
    if isinstance(expression, dict):
        [(name, arg)] = expression.items()
        if name == "Fn::Equals":
            a, b = (resolve(x, {}, values) for x in arg)
            return str(a) == str(b)
        if name == "Fn::Not":
            return not evaluate_condition(arg[0], conditions, values)
        if name == "Fn::Or":
            return any(evaluate_condition(x, conditions, values) for x in arg)
        if name == "Fn::And":
            return all(evaluate_condition(x, conditions, values) for x in arg)
        if name == "Condition":
            return evaluate_condition(conditions[arg], conditions, values)
    raise AssertionError(f"not a condition: {expression!r}")


def evaluate_conditions(template: dict, values: dict) -> dict[str, bool]:
    raw = template["Conditions"]
    return {name: evaluate_condition(expr, raw, values) for name, expr in raw.items()}


def resolve(node, conditions: dict, values: dict):
    """What CloudFormation makes of a value at deploy time: Ref to a parameter or pseudo
    parameter, Fn::If, Fn::Sub (both forms); Fn::GetAtt ClassifierFunction.Arn becomes
    FUNCTION_ARN, other references stay as they are. AWS::NoValue removes the key."""
    if isinstance(node, list):
        return [r for r in (resolve(v, conditions, values) for v in node) if r != {"Ref": "AWS::NoValue"}]
    if not isinstance(node, dict):
        return node
    if set(node) == {"Ref"} and (node["Ref"] in values or node["Ref"] in PSEUDO):
        return values.get(node["Ref"], PSEUDO.get(node["Ref"]))
    if set(node) == {"Fn::If"}:
        name, yes, no = node["Fn::If"]
        return resolve(yes if conditions[name] else no, conditions, values)
    if set(node) == {"Fn::GetAtt"} and node["Fn::GetAtt"] == ["ClassifierFunction", "Arn"]:
        return FUNCTION_ARN
    if set(node) == {"Fn::Sub"}:
        text, local = (node["Fn::Sub"], {}) if isinstance(node["Fn::Sub"], str) else node["Fn::Sub"]
        names = {**PSEUDO, **values, **{k: resolve(v, conditions, values) for k, v in local.items()}}
        return re.sub(r"\$\{([^}]+)\}", lambda m: str(names[m.group(1)]) if m.group(1) in names else m.group(0), text)
    out = {k: resolve(v, conditions, values) for k, v in node.items()}
    return {k: v for k, v in out.items() if v != {"Ref": "AWS::NoValue"}}


def deployed(template: dict, **given: str) -> dict:
    """The stack CloudFormation would create with these parameter values: resources and
    outputs whose condition is false dropped, every value resolved."""
    values = parameter_values(template, **given)
    conditions = evaluate_conditions(template, values)
    keep = lambda section: {k: v for k, v in template[section].items()  # noqa: E731
                            if "Condition" not in v or conditions[v["Condition"]]}
    return {"Resources": resolve(keep("Resources"), conditions, values),
            "Outputs": resolve(keep("Outputs"), conditions, values), "conditions": conditions}


def statements(resource: dict) -> list[dict]:
    properties = resource["Properties"]
    documents = [properties["PolicyDocument"]] if "PolicyDocument" in properties else \
        [p["PolicyDocument"] for p in properties.get("Policies", ())]
    return [s for d in documents for s in d["Statement"]]


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def test_s3_batch_is_off_by_default_and_leaves_the_function_as_it_was(template):
    stack = deployed(template)
    assert stack["conditions"] == {"UseApiKey": False, "UseS3Batch": False, "HasResultsBucket": False,
                                   "HasReservedConcurrency": False}
    assert "ClassifierS3Policy" not in stack["Resources"] and "BatchOperationsRole" not in stack["Resources"]
    assert "BatchOperationsRoleArn" not in stack["Outputs"] and "FunctionArn" in stack["Outputs"]
    function = stack["Resources"]["ClassifierFunction"]["Properties"]
    assert "ReservedConcurrentExecutions" not in function  # unreserved
    assert "Policies" not in function  # SAM's role keeps only the basic execution policy


@pytest.mark.parametrize("results_bucket", ["", "busi-out"], ids=["beside-the-images", "results-bucket"])
def test_function_s3_policy_is_scoped_to_the_source_prefix_and_the_results_prefix(template, results_bucket):
    stack = deployed(template, SourceBucketName="scans", SourcePrefix="images/", ResultsBucketName=results_bucket)
    out = results_bucket or "scans"
    policy = stack["Resources"]["ClassifierS3Policy"]
    assert policy["Properties"]["Roles"] == [{"Ref": "ClassifierFunctionRole"}]  # the role SAM makes for the function
    granted = {(s["Sid"], tuple(as_list(s["Action"])), tuple(as_list(s["Resource"]))) for s in statements(policy)}
    assert granted == {
        ("ReadSourceImages", ("s3:GetObject", "s3:GetObjectVersion"), ("arn:aws:s3:::scans/images/*",)),
        ("WriteAndReadResults", ("s3:PutObject", "s3:GetObject"), (f"arn:aws:s3:::{out}/busi-results/*",)),
    }
    variables = stack["Resources"]["ClassifierFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["RESULTS_BUCKET"] == results_bucket and variables["RESULTS_PREFIX"] == "busi-results/"
    assert stack["Outputs"]["ResultsBucket"]["Value"] == out


def test_no_new_statement_has_a_wildcard_resource_or_action(template):
    for given in ({"SourceBucketName": "scans"}, {"SourceBucketName": "scans", "SourcePrefix": "a/",
                                                  "ResultsBucketName": "out"}):
        stack = deployed(template, **given)
        found = statements(stack["Resources"]["ClassifierS3Policy"]) + \
            statements(stack["Resources"]["BatchOperationsRole"])
        assert len(found) == 6
        for statement in found:
            assert statement["Effect"] == "Allow"
            for action in as_list(statement["Action"]):
                assert "*" not in action, statement
            for resource in as_list(statement["Resource"]):
                assert isinstance(resource, str) and resource != "*", statement
                assert resource == FUNCTION_ARN or resource.startswith(("arn:aws:s3:::scans", "arn:aws:s3:::out")), \
                    statement
                assert not resource.startswith("arn:aws:s3:::*") and "${" not in resource, statement


def test_batch_role_trusts_only_s3_batch_operations_of_this_account(template):
    role = deployed(template, SourceBucketName="scans")["Resources"]["BatchOperationsRole"]["Properties"]
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Effect"] == "Allow" and trust["Action"] == "sts:AssumeRole"
    assert trust["Principal"] == {"Service": "batchoperations.s3.amazonaws.com"}
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": "123456789012"}}


@pytest.mark.parametrize("results_bucket", ["", "busi-out"], ids=["beside-the-images", "results-bucket"])
def test_batch_role_invokes_this_function_reads_manifests_writes_reports(template, results_bucket):
    from busi_classifier.local import archive

    stack = deployed(template, SourceBucketName="scans", SourcePrefix="images/", ResultsBucketName=results_bucket)
    out = results_bucket or "scans"
    granted = {s["Sid"]: (as_list(s["Action"]), as_list(s["Resource"]))
               for s in statements(stack["Resources"]["BatchOperationsRole"])}
    assert granted == {
        "InvokeTheClassifier": (["lambda:InvokeFunction"], [FUNCTION_ARN]),
        "ReadManifests": (["s3:GetObject", "s3:GetObjectVersion"], [f"arn:aws:s3:::{out}/busi-batch/manifests/*"]),
        "WriteReportsAndGeneratedManifests": (["s3:PutObject"], [f"arn:aws:s3:::{out}/busi-batch/reports/*",
                                                                 f"arn:aws:s3:::{out}/busi-batch/manifests/*"]),
        "ListSourceForGeneratedManifests": (["s3:ListBucket"], ["arn:aws:s3:::scans"]),
    }
    assert stack["Outputs"]["BatchOperationsRoleArn"]["Value"] == {"Fn::GetAtt": ["BatchOperationsRole", "Arn"]}
    # what `archive submit` asks of that role lies where the role may read and write
    submission = archive.prepare_job(None, "123456789012", "scans", "images/", FUNCTION_ARN, "arn:aws:iam::1:role/r",
                                     report_bucket=out, generated_manifest=True)
    report = submission.request["Report"]
    assert report["Bucket"] == f"arn:aws:s3:::{out}" and f"{report['Prefix']}/job-x/".startswith("busi-batch/reports/")
    generated = submission.request["ManifestGenerator"]["S3JobManifestGenerator"]["ManifestOutputLocation"]
    assert f"{generated['ManifestPrefix']}/x.csv".startswith("busi-batch/manifests/")
    assert archive.manifest_key("busi-batch/", b"x").startswith("busi-batch/manifests/")


@pytest.mark.parametrize("value, reserved", [("", None), ("0", None), ("100", "100")])
def test_reserved_concurrency_empty_or_zero_is_unreserved(template, value, reserved):
    parameter = template["Parameters"]["ReservedConcurrency"]
    assert parameter["Default"] == "" and parameter["AllowedPattern"] == "^[0-9]*$"
    function = deployed(template, ReservedConcurrency=value)["Resources"]["ClassifierFunction"]["Properties"]
    assert function.get("ReservedConcurrentExecutions") == reserved


def test_prefix_defaults_are_the_ones_the_code_uses(template):
    from busi_classifier.local import archive
    from busi_classifier.serving import settings

    parameters = template["Parameters"]
    assert parameters["ResultsPrefix"]["Default"] == archive.DEFAULT_RESULTS_PREFIX == settings.DEFAULT_RESULTS_PREFIX
    assert parameters["BatchPrefix"]["Default"] == archive.DEFAULT_BATCH_PREFIX
    for name in ("ResultsPrefix", "BatchPrefix"):
        pattern = re.compile(parameters[name]["AllowedPattern"])
        assert pattern.match("busi-results/") and not pattern.match("/a/") and not pattern.match("a") \
            and not pattern.match("a*/")
    for name in ("SourceBucketName", "ResultsBucketName"):
        pattern = re.compile(parameters[name]["AllowedPattern"])
        assert pattern.match("") and pattern.match("my-scans.2024") and not pattern.match("Scans")


@pytest.mark.parametrize("given", [{}, {"SourceBucketName": "scans"},
                                   {"SourceBucketName": "scans", "ResultsBucketName": "out", "ReservedConcurrency": "100"}],
                         ids=["defaults", "source-bucket", "all-set"])
def test_sam_transform_passes_with_and_without_the_optional_parameters(template, monkeypatch, given):
    """The SAM transform with the conditions resolved as CloudFormation would for these
    values: the role the policy attaches to exists, the reserved concurrency arrives."""
    from samtranslator.translator.transform import transform

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    values = parameter_values(template, **given)
    conditions = evaluate_conditions(template, values)
    sam = resolve_conditions(copy.deepcopy(template), conditions)
    sam["Resources"] = {k: v for k, v in sam["Resources"].items() if "Condition" not in v or conditions[v["Condition"]]}
    sam["Transform"] = "AWS::Serverless-2016-10-31"
    sam["Resources"]["ClassifierFunction"]["Properties"]["ImageUri"] = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/busi:latest"

    class NoManagedPolicies:
        def load(self):
            return {}

    cfn = transform(sam, {}, NoManagedPolicies())
    roles = of_type(cfn, "AWS::IAM::Role")
    assert "ClassifierFunctionRole" in roles  # the logical id ClassifierS3Policy refers to
    assert ("BatchOperationsRole" in roles) is bool(given)
    [function] = of_type(cfn, "AWS::Lambda::Function").values()
    reserved = function["Properties"].get("ReservedConcurrentExecutions")
    assert reserved == ({"Ref": "ReservedConcurrency"} if given.get("ReservedConcurrency") else {"Ref": "AWS::NoValue"})
    policies = of_type(cfn, "AWS::IAM::Policy")
    assert set(policies) == ({"ClassifierS3Policy"} if given else set())
    # SAM's own role for the function grants nothing in S3
    for statement in roles["ClassifierFunctionRole"]["Properties"].get("Policies", ()):
        assert "s3" not in json.dumps(statement).lower()


@pytest.mark.parametrize("defaults", [{"SourceBucketName": "scans"},
                                      {"SourceBucketName": "scans", "ResultsBucketName": "out",
                                       "SourcePrefix": "images/", "ReservedConcurrency": "100"}],
                         ids=["source-bucket", "all-set"])
def test_cfn_lint_passes_with_the_s3_batch_parameters_set(defaults, tmp_path):
    """The template with these values as the parameters' defaults (what cfn-lint evaluates
    the conditions with) is still valid."""
    from cfnlint.api import lint_file

    text = TEMPLATE.read_text()
    for name, value in defaults.items():
        block = text.split(f"\n  {name}:\n", 1)
        head, rest = block
        old = rest.split("\n", 2)[1]
        assert old.strip().startswith("Default:"), (name, old)
        text = head + f"\n  {name}:\n" + rest.replace(old, f'    Default: "{value}"', 1)
    fixed = tmp_path / "template.yaml"
    fixed.write_text(text)
    assert [str(m) for m in lint_file(fixed)] == []


def test_archive_docs_name_every_new_parameter_and_output(template):
    text = (ROOT / "docs" / "archive.md").read_text()
    for name in ("SourceBucketName", "SourcePrefix", "ResultsBucketName", "ResultsPrefix", "BatchPrefix",
                 "ReservedConcurrency", "BatchOperationsRoleArn", "FunctionArn", "ResultsBucket"):
        assert name in text, name
    assert {"BatchOperationsRoleArn", "ResultsBucket"} <= set(template["Outputs"])
