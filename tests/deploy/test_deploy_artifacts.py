"""The deployment artifacts under deploy/: linted by the real tools, checked for what we promise.

Linters run as subprocesses from this interpreter's bin directory (they come with the
``test`` extra) and a finding fails the test. Each "the check can fail" case feeds the same
tool or checker a known-bad input, so a silently broken linter cannot pass for a clean one.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from broker.domain.templates import parse_template
from broker.identity.oidc import issuer_config, issuer_warnings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
CLOUDFORMATION = DEPLOY / "aws" / "broker.yaml"
OPERATOR_GUIDE = DEPLOY / "README.md"
TOOL_BIN = Path(sys.executable).parent

# Oldest and newest Kubernetes minor versions the manifests are validated against.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
# Not Kubernetes objects: kustomize's own file.
NON_OBJECT_MANIFESTS = {"kustomization.yaml"}

# The settings the broker reads (broker serve / broker migrate).
BROKER_ENVIRONMENT = {
    "BROKER_DATABASE_URL", "BROKER_SCOPES_DIR", "BROKER_AWS_ENDPOINT_URL", "BROKER_AWS_REGION",
    "BROKER_SIGNING_KEY_FILE", "BROKER_OIDC_ISSUERS_FILE", "BROKER_PUBLIC_URL", "BROKER_WEBHOOK_URL",
    "BROKER_HOST", "BROKER_PORT", "BROKER_ACCOUNTS", "BROKER_TARGET_ROLE_PREFIX",
}
# Settings that hold a secret: never a literal value in a Kubernetes manifest.
SECRET_ENVIRONMENT = {"BROKER_DATABASE_URL"}


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def run_tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    executable = TOOL_BIN / name
    assert executable.exists(), f"{name} is not installed next to {sys.executable} (it is in the test extra)"
    return subprocess.run([str(executable), *args], capture_output=True, text=True, timeout=300,
                          check=False, cwd=REPO)


def tool_report(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBERNETES.glob("*.yaml") if p.name not in NON_OBJECT_MANIFESTS)


def kubernetes_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in manifest_files()
            for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def find_object(kind: str, name: str) -> dict[str, Any]:
    matches = [doc for _, doc in kubernetes_objects()
               if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


class CloudFormationLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags, read as their long form (``!Ref x`` -> ``{"Ref": x}``)."""


def _construct_intrinsic(loader: CloudFormationLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CloudFormationLoader.add_multi_constructor("!", _construct_intrinsic)


def cloudformation() -> dict[str, Any]:
    return yaml.load(CLOUDFORMATION.read_text(), Loader=CloudFormationLoader)  # noqa: S506 - SafeLoader subclass


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def deploy_yaml_documents() -> Iterator[tuple[Path, Any]]:
    for path in sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]):
        loader = CloudFormationLoader if path == CLOUDFORMATION else yaml.SafeLoader
        for doc in yaml.load_all(path.read_text(), Loader=loader):  # noqa: S506 - SafeLoader subclasses
            yield path, doc


# ---------------------------------------------------------------------------
# Linters: cfn-lint, hadolint, kubernetes-validate
# ---------------------------------------------------------------------------


def test_cloudformation_template_passes_cfn_lint() -> None:
    result = run_tool("cfn-lint", str(CLOUDFORMATION))
    assert result.returncode == 0, tool_report(result)


def test_cfn_lint_fails_a_broken_template(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        'AWSTemplateFormatVersion: "2010-09-09"\n'
        "Resources:\n"
        "  Role:\n"
        "    Type: AWS::IAM::Role\n"
        "    Properties:\n"
        "      NotAProperty: 1\n"
    )
    result = run_tool("cfn-lint", str(broken))
    assert result.returncode != 0, tool_report(result)


def test_dockerfile_passes_hadolint() -> None:
    result = run_tool("hadolint", "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, tool_report(result)


def test_hadolint_fails_a_sloppy_dockerfile(tmp_path: Path) -> None:
    sloppy = tmp_path / "Dockerfile"
    sloppy.write_text("FROM python:latest\nRUN pip install requests\nCMD python -m http.server\n")
    result = run_tool("hadolint", "--no-color", str(sloppy))
    assert result.returncode != 0, tool_report(result)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs, f"{path.name} holds no object"
    for doc in docs:
        # NOTE: strict=True rejects unknown fields, which plain schema validation would ignore.
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda d: d["spec"]["template"]["spec"]["containers"][0].update(unknownField=1),
                     id="unknown-container-field"),
        pytest.param(lambda d: d["spec"].update(replicas="two"), id="replicas-not-integer"),
        pytest.param(lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"),
                     id="container-without-name"),
    ],
)
def test_kubernetes_validate_rejects_a_broken_deployment(mutate: Callable[[dict[str, Any]], Any]) -> None:
    deployment = copy.deepcopy(find_object("Deployment", "broker"))
    mutate(deployment)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_long_lived_manifest() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    for name in listed:
        assert (KUBERNETES / name).is_file(), f"kustomization lists missing {name}"
    # The migration Job runs to completion before a rollout, so it is applied on its own.
    assert "job-migrate.yaml" not in listed
    assert listed == {p.name for p in manifest_files()} - {"job-migrate.yaml"}


# ---------------------------------------------------------------------------
# Kubernetes: hardening, probes, wiring
# ---------------------------------------------------------------------------

RESTRICTED = object()  # marker: "must be present" (value checked by the rule itself)

# Pod-level and container-level requirements, as (dotted path, expected value).
POD_SECURITY_RULES: tuple[tuple[str, Any], ...] = (
    ("securityContext.runAsNonRoot", True),
    ("securityContext.seccompProfile.type", "RuntimeDefault"),
    ("automountServiceAccountToken", False),
)
CONTAINER_SECURITY_RULES: tuple[tuple[str, Any], ...] = (
    ("securityContext.runAsNonRoot", True),
    ("securityContext.readOnlyRootFilesystem", True),
    ("securityContext.allowPrivilegeEscalation", False),
    ("securityContext.privileged", False),
    ("securityContext.capabilities.drop", ["ALL"]),
    ("securityContext.capabilities.add", None),
    ("securityContext.seccompProfile.type", "RuntimeDefault"),
    ("resources.requests.cpu", RESTRICTED),
    ("resources.requests.memory", RESTRICTED),
    ("resources.limits.cpu", RESTRICTED),
    ("resources.limits.memory", RESTRICTED),
)


def dig(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def hardening_violations(workload: dict[str, Any]) -> list[str]:
    """Every way a Deployment/Job pod template falls short of the restricted profile we promise."""
    pod = workload["spec"]["template"]["spec"]
    containers = [*pod.get("initContainers", []), *pod.get("containers", [])]
    checks = [(f"pod {path}", dig(pod, path), expected) for path, expected in POD_SECURITY_RULES]
    checks += [(f"container {c.get('name')} {path}", dig(c, path), expected)
               for c in containers for path, expected in CONTAINER_SECURITY_RULES]
    if not containers or not checks:
        return ["no containers to check"]
    violations = []
    for where, actual, expected in checks:
        ok = actual is not None if expected is RESTRICTED else actual == expected
        if not ok:
            violations.append(f"{where} is {actual!r}, expected {'set' if expected is RESTRICTED else repr(expected)}")
    return violations


WORKLOADS = (("Deployment", "broker"), ("Job", "broker-migrate"))


@pytest.mark.parametrize(("kind", "name"), WORKLOADS)
def test_workload_runs_restricted(kind: str, name: str) -> None:
    assert hardening_violations(find_object(kind, name)) == []


@pytest.mark.parametrize("path", [path for path, _ in POD_SECURITY_RULES])
def test_hardening_check_catches_a_weakened_pod(path: str) -> None:
    deployment = copy.deepcopy(find_object("Deployment", "broker"))
    set_dotted(deployment["spec"]["template"]["spec"], path, "weakened")
    assert any(path in v for v in hardening_violations(deployment))


@pytest.mark.parametrize(("path", "expected"), [*CONTAINER_SECURITY_RULES])
def test_hardening_check_catches_a_weakened_container(path: str, expected: Any) -> None:
    deployment = copy.deepcopy(find_object("Deployment", "broker"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    if expected is RESTRICTED:
        parent, _, leaf = path.rpartition(".")
        dig(container, parent).pop(leaf)
    else:
        set_dotted(container, path, ["NET_ADMIN"] if expected is None else "weakened")
    assert any(path in v for v in hardening_violations(deployment))


def set_dotted(obj: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        obj = obj.setdefault(part, {})
    obj[leaf] = value


def test_deployment_serves_with_replicas_and_probes() -> None:
    deployment = find_object("Deployment", "broker")
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (container,) = spec["template"]["spec"]["containers"]
    assert container["args"] == ["serve"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # The only writable place is an in-memory /tmp.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    writable = [path for path, m in mounts.items() if not m.get("readOnly")]
    assert writable == ["/tmp"]


def test_migration_job_runs_migrate_once() -> None:
    job = find_object("Job", "broker-migrate")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["migrate"]
    assert pod["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] <= 3
    deployment_image = find_object("Deployment", "broker")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert container["image"] == deployment_image


@pytest.mark.parametrize(("kind", "name"), [("Service", "broker"), ("PodDisruptionBudget", "broker")])
def test_selectors_pick_the_broker_pods(kind: str, name: str) -> None:
    pod_labels = find_object("Deployment", "broker")["spec"]["template"]["metadata"]["labels"]
    obj = find_object(kind, name)
    selector = obj["spec"]["selector"]
    selector = selector.get("matchLabels", selector)
    assert selector, f"{kind}/{name} selects nothing"
    assert selector.items() <= pod_labels.items()


def test_pod_disruption_budget_leaves_a_replica() -> None:
    pdb = find_object("PodDisruptionBudget", "broker")
    replicas = find_object("Deployment", "broker")["spec"]["replicas"]
    assert 1 <= pdb["spec"]["minAvailable"] < replicas


def container_environment(container: dict[str, Any], config: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Every BROKER_* variable a container gets: {name: the env entry or {"configMap": value}}."""
    env = {name: {"configMap": value} for name, value in config.items()}
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] == "broker-config", "unexpected envFrom source"
    env.update({entry["name"]: entry for entry in container.get("env", [])})
    return env


def test_deployment_gets_every_setting_and_secrets_by_reference() -> None:
    config = find_object("ConfigMap", "broker-config")["data"]
    container = find_object("Deployment", "broker")["spec"]["template"]["spec"]["containers"][0]
    env = container_environment(container, config)
    # Everything but the local AWS endpoint, which production must not set.
    assert set(env) == BROKER_ENVIRONMENT - {"BROKER_AWS_ENDPOINT_URL"}
    for name in SECRET_ENVIRONMENT:
        assert "value" not in env[name] and "configMap" not in env[name], f"{name} must come from a Secret"
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "broker-database", "key": "url"}
    volumes = {v["name"]: v for v in find_object("Deployment", "broker")["spec"]["template"]["spec"]["volumes"]}
    signing = volumes["signing-key"]["secret"]
    assert signing["secretName"] == "broker-checkpoint-signing-key"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "signing-key")
    key_path = f"{mount['mountPath']}/{signing['items'][0]['path']}"
    assert config["BROKER_SIGNING_KEY_FILE"] == key_path
    assert signing["defaultMode"] & 0o007 == 0, "the signing key must not be world-readable"


def test_mounted_config_paths_match_the_settings() -> None:
    config = find_object("ConfigMap", "broker-config")["data"]
    pod = find_object("Deployment", "broker")["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert config["BROKER_SCOPES_DIR"] == mounts["scopes"]
    assert volumes["scopes"]["configMap"]["name"] == "broker-scopes"
    issuers_dir, _, issuers_key = config["BROKER_OIDC_ISSUERS_FILE"].rpartition("/")
    assert issuers_dir == mounts["oidc-issuers"]
    assert issuers_key in find_object("ConfigMap", volumes["oidc-issuers"]["configMap"]["name"])["data"]


# ---------------------------------------------------------------------------
# Secrets: references only, never values
# ---------------------------------------------------------------------------

SECRET_VALUE_KEYS = ("data", "stringData", "binaryData")
PRIVATE_KEY_MARKER = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")


def secret_value_violations(doc: Any) -> list[str]:
    if not isinstance(doc, dict) or doc.get("kind") != "Secret":
        return []
    name = dig(doc, "metadata.name")
    return [f"Secret {name} has {key}" for key in SECRET_VALUE_KEYS if doc.get(key)]


def test_no_secret_manifest_holds_values() -> None:
    violations = [f"{path.relative_to(REPO)}: {v}"
                  for path, doc in deploy_yaml_documents() for v in secret_value_violations(doc)]
    assert violations == []


@pytest.mark.parametrize("key", SECRET_VALUE_KEYS)
def test_secret_check_catches_a_secret_with_values(key: str) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "broker-database"},
              key: {"url": "cG9zdGdyZXM="}}
    assert secret_value_violations(secret) == [f"Secret broker-database has {key}"]


def test_no_private_key_is_committed_under_deploy() -> None:
    committed = [p for p in DEPLOY.rglob("*") if p.is_file() and PRIVATE_KEY_MARKER.search(
        p.read_text(errors="replace"))]
    assert committed == []


# ---------------------------------------------------------------------------
# Configuration shipped in the manifests is what the broker accepts
# ---------------------------------------------------------------------------


def test_configmap_scope_templates_load_as_the_server_loads_them(tmp_path: Path) -> None:
    import broker.api.deps as deps
    from broker.storage.template_files import load_catalog

    templates = find_object("ConfigMap", "broker-scopes")["data"]
    assert templates, "the scopes ConfigMap holds no template"
    for filename, text in templates.items():
        assert filename == f"{parse_template(text, source=filename).name}.yaml"
        (tmp_path / filename).write_text(text)
    # The same guardrail checks `broker serve` runs at start: a finding raises.
    from broker.settings import BrokerSettings

    environment = find_object("ConfigMap", "broker-config")["data"]
    settings = BrokerSettings(accounts=json.loads(environment["BROKER_ACCOUNTS"]),
                              target_role_prefix=environment["BROKER_TARGET_ROLE_PREFIX"])
    template_checks, _, _ = deps.template_checks(settings)
    load_catalog(tmp_path, checks=template_checks)


def test_configmap_production_template_needs_two_co_signers() -> None:
    templates = find_object("ConfigMap", "broker-scopes")["data"]
    parsed = [parse_template(text, source=name) for name, text in templates.items()]
    production = [t for t in parsed if t.environment == "production"]
    assert production
    assert all(t.approval.approvals >= 2 for t in production)


def oidc_issuer_documents() -> list[Any]:
    return [
        pytest.param("kubernetes", find_object("ConfigMap", "broker-oidc-issuers")["data"]["issuers.json"],
                     id="kubernetes"),
        pytest.param("compose", (DEPLOY / "compose" / "oidc-issuers.json").read_text(), id="compose"),
    ]


@pytest.mark.parametrize(("where", "text"), oidc_issuer_documents())
def test_oidc_issuer_files_are_valid_issuer_configs(where: str, text: str) -> None:
    issuers = json.loads(text)
    assert isinstance(issuers, list) and issuers, f"{where}: no issuer"
    configs = [issuer_config(entry) for entry in issuers]
    # NOTE: examples get copied: each one pinned, so broker serve has nothing to warn about.
    assert issuer_warnings(configs) == [], where


# ---------------------------------------------------------------------------
# docker compose
# ---------------------------------------------------------------------------


def test_compose_runs_two_broker_replicas_on_postgres_and_a_local_aws() -> None:
    services = compose()["services"]
    assert services["postgres"]["image"] == "postgres:15"
    assert services["aws"]["image"].startswith("motoserver/moto:")
    assert services["aws"]["image"] != "motoserver/moto:latest"
    broker = services["broker"]
    assert broker["deploy"]["replicas"] >= 2
    assert broker["command"] == ["serve"]
    assert services["migrate"]["command"] == ["migrate"]


@pytest.mark.parametrize("service", ["postgres", "aws", "broker"])
def test_compose_long_running_services_have_healthchecks(service: str) -> None:
    check = compose()["services"][service]["healthcheck"]
    assert check["test"][0] == "CMD" and len(check["test"]) > 1
    assert check.get("disable") is not True


def test_compose_broker_waits_for_its_dependencies() -> None:
    depends = compose()["services"]["broker"]["depends_on"]
    assert depends == {
        "postgres": {"condition": "service_healthy"},
        "aws": {"condition": "service_healthy"},
        "keygen": {"condition": "service_completed_successfully"},
        "migrate": {"condition": "service_completed_successfully"},
    }


@pytest.mark.parametrize("service", ["broker", "migrate", "keygen"])
def test_compose_broker_containers_are_locked_down(service: str) -> None:
    spec = compose()["services"][service]
    assert spec["read_only"] is True
    assert spec["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in spec["security_opt"]
    assert spec["user"] == "10001:10001"
    assert spec["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert (COMPOSE.parent / spec["build"]["context"] / spec["build"]["dockerfile"]).resolve() == DOCKERFILE


def test_compose_broker_environment_is_complete_and_local() -> None:
    services = compose()["services"]
    env = services["broker"]["environment"]
    assert BROKER_ENVIRONMENT <= set(env)
    assert env["BROKER_AWS_ENDPOINT_URL"].startswith("http://aws:")
    assert "@postgres:5432/" in env["BROKER_DATABASE_URL"]
    for path_setting in ("BROKER_SCOPES_DIR", "BROKER_OIDC_ISSUERS_FILE", "BROKER_SIGNING_KEY_FILE"):
        target = env[path_setting]
        mounts = [v.split(":")[1] for v in services["broker"]["volumes"]]
        assert any(target == m or target.startswith(m + "/") for m in mounts), f"{path_setting} is not mounted"


def test_compose_bind_mounts_exist() -> None:
    for name, spec in compose()["services"].items():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"


# ---------------------------------------------------------------------------
# CloudFormation: what the broker's role may do, and who may assume a target role
# ---------------------------------------------------------------------------


def statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    found = document["Statement"]
    assert found, "a policy with no statements"
    return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_broker_role_may_only_assume_and_revoke_on_target_roles() -> None:
    resources = cloudformation()["Resources"]
    (policy,) = resources["BrokerRole"]["Properties"]["Policies"]
    allows = [s for s in statements(policy["PolicyDocument"]) if s["Effect"] == "Allow"]
    target_arn = {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/${TargetRolePrefix}*"}
    allowed_actions = set()
    for statement in allows:
        assert as_list(statement["Resource"]) == [target_arn], statement["Sid"]
        allowed_actions |= set(as_list(statement["Action"]))
    assert allowed_actions == {
        "sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity",
        "iam:PutRolePolicy", "iam:DeleteRolePolicy", "iam:GetRolePolicy", "iam:ListRolePolicies",
    }
    # Writes only on roles capped by the session boundary.
    writes = {"iam:PutRolePolicy", "iam:DeleteRolePolicy"}
    write_statements = [s for s in allows if writes & set(as_list(s["Action"]))]
    assert write_statements
    for statement in write_statements:
        boundary = statement["Condition"]["StringEquals"]["iam:PermissionsBoundary"]
        assert boundary == {"Ref": "SessionBoundary"}


def test_target_role_trusts_only_the_broker_with_identity_and_request_tag() -> None:
    role = cloudformation()["Resources"]["ExampleTargetRole"]["Properties"]
    trust = statements(role["AssumeRolePolicyDocument"])
    by_action: dict[str, dict[str, Any]] = {}
    for statement in trust:
        assert statement["Effect"] == "Allow"
        assert statement["Principal"] == {"AWS": {"Fn::GetAtt": ["BrokerRole", "Arn"]}}
        for action in as_list(statement["Action"]):
            by_action[action] = statement["Condition"]
    assert set(by_action) == {"sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"}
    assert by_action["sts:AssumeRole"]["StringLike"]["sts:SourceIdentity"] == "agent.*"
    assert by_action["sts:SetSourceIdentity"]["StringLike"]["sts:SourceIdentity"] == "agent.*"
    for action in ("sts:AssumeRole", "sts:TagSession"):
        assert by_action[action]["Null"]["aws:RequestTag/broker-request-id"] == "false"
    assert role["PermissionsBoundary"] == {"Ref": "SessionBoundary"}
    assert "Policies" not in role, "a target role's only inline policy is the broker's revocation policy"


def test_session_boundary_denies_identity_and_organization_changes() -> None:
    boundary = cloudformation()["Resources"]["SessionBoundary"]["Properties"]["PolicyDocument"]
    denied = {a for s in statements(boundary) if s["Effect"] == "Deny" for a in as_list(s["Action"])}
    assert {"iam:*", "organizations:*", "sts:AssumeRole"} <= denied


def test_the_anchor_bucket_locks_in_compliance_mode_and_the_broker_may_only_add_and_read() -> None:
    template = cloudformation()
    bucket = template["Resources"]["AnchorBucket"]
    props = bucket["Properties"]
    assert bucket["Condition"] == "Anchors" and bucket["DeletionPolicy"] == "Retain"
    assert props["ObjectLockEnabled"] is True and props["VersioningConfiguration"]["Status"] == "Enabled"
    retention = props["ObjectLockConfiguration"]["Rule"]["DefaultRetention"]
    assert retention == {"Mode": "COMPLIANCE", "Days": {"Ref": "AnchorRetentionDays"}}
    assert all(props["PublicAccessBlockConfiguration"].values())
    policy = template["Resources"]["BrokerAnchorPolicy"]["Properties"]["PolicyDocument"]
    allowed = {a for s in statements(policy) if s["Effect"] == "Allow" for a in as_list(s["Action"])}
    assert allowed == {"s3:PutObject", "s3:PutObjectRetention", "s3:GetObject", "s3:ListBucket"}
    # The settings the broker reads (BROKER_ANCHOR_*) are named by the stack's parameters and outputs.
    assert "BROKER_ANCHOR_BUCKET" in template["Parameters"]["AnchorBucketName"]["Description"]
    assert "BROKER_ANCHOR_RETENTION_DAYS" in template["Parameters"]["AnchorRetentionDays"]["Description"]


# ---------------------------------------------------------------------------
# The operator's guide covers what operators need
# ---------------------------------------------------------------------------

GUIDE_TOPICS = (
    "broker migrate", "signing key", "rotat", "OIDC", "replicas", "backup", "audit verify",
    "alert", "lockdown", "broker-revocations", "PermissionsBoundary", "--anchors", "audit reconcile",
)


def test_operator_guide_names_every_setting_and_topic() -> None:
    guide = OPERATOR_GUIDE.read_text()
    missing = sorted(name for name in BROKER_ENVIRONMENT if name not in guide)
    missing += [topic for topic in GUIDE_TOPICS if topic.lower() not in guide.lower()]
    assert missing == []


def broker_settings_variables() -> set[str]:
    """The variables the broker's settings actually read."""
    import broker.settings as settings
    return {f"BROKER_{name.upper()}" for name in settings.BrokerSettings.model_fields} | {"BROKER_CONFIG_FILE"}


def test_the_broker_reads_every_setting_deploy_sets() -> None:
    assert BROKER_ENVIRONMENT <= broker_settings_variables()


def test_deploy_files_use_only_known_settings() -> None:
    used = set()
    for path in DEPLOY.rglob("*"):
        # deploy/local/ holds developer scripts, not deployment configuration.
        if path.is_file() and "local" not in path.relative_to(DEPLOY).parts:
            used |= set(re.findall(r"\bBROKER_[A-Z_]+\b", path.read_text(errors="replace")))
    # Not server settings: compose's interpolation variable and the CLI client's variables.
    others = {"BROKER_DB_PASSWORD", "BROKER_URL", "BROKER_TOKEN"}
    assert used - others <= broker_settings_variables()
