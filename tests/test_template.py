"""template.yaml (AWS SAM): cfn-lint passes, and the SAM transform (aws-sam-translator,
offline) turns it into the API the README describes: routes, binary media types, CORS,
throttling, the optional API key, the error shape of API Gateway's own refusals, the
outputs test.py --stack reads."""

from __future__ import annotations

import copy
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
                 "model_int8_full.tflite"):
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
