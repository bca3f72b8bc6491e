"""deploy/: the Kubernetes drop-in for go-simple-uploader, the Containerfile and
the Tekton cache steps, checked as data.

Kubernetes manifests are validated against the API schemas that
kubernetes-validate ships (strict: unknown fields are errors); the Tekton YAML is
checked by the structural rules Tekton applies (every variable declared, every
reference resolvable), since no Tekton schema is available offline.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import StartServer, curl

from bench.seaweedfs import SeaweedFS
from cachesrv import config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
KUBE = DEPLOY / "kubernetes"
TEKTON = DEPLOY / "tekton"
# Oldest Kubernetes release the manifests promise to work on (its schemas ship
# with kubernetes-validate).
K8S_VERSION = "1.30.0"
SERVER_DEFAULT_GRACE = 30.0


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kube_manifests() -> list[Path]:
    return sorted(p for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for p in kube_manifests() for d in docs(p) if d["kind"] == kind]


def secret_named(name: str) -> dict[str, Any]:
    (secret,) = [s for s in by_kind("Secret") if s["metadata"]["name"] == name]
    return secret


def deployment() -> dict[str, Any]:
    (dep,) = by_kind("Deployment")
    return dep


def container() -> dict[str, Any]:
    (c,) = deployment()["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


# -- Kubernetes ----------------------------------------------------------------


@pytest.mark.parametrize("path", kube_manifests(), ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path: Path) -> None:
    for doc in docs(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    (kust,) = docs(KUBE / "kustomization.yaml")
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kust["kind"] == "Kustomization"
    names = {p.name for p in kube_manifests()}
    assert set(kust["resources"]) == names - {"secret-example.yaml", "tokens-example.yaml"}
    images = {i["name"] for i in kust.get("images", [])}
    assert container()["image"].split(":")[0] in images


def test_drop_in_names_port_and_environment() -> None:
    dep = deployment()
    assert dep["metadata"]["name"] == "uploader"
    (svc,) = by_kind("Service")
    assert svc["metadata"]["name"] == "uploader"
    (port,) = svc["spec"]["ports"]
    assert port["port"] == 8080
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    c = container()
    named_ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert named_ports[port["targetPort"]] == 8080
    env = env_of(c)
    assert env["UPLOADER_HOST"]["value"] == "0.0.0.0"
    assert env["UPLOADER_PORT"]["value"] == "8080"
    assert env["UPLOADER_DIRECTORY"]["value"] == "/data"
    ref = env["UPLOADER_UPLOAD_CREDENTIALS"]["valueFrom"]["secretKeyRef"]
    secret = secret_named("uploader-credentials")
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]
    # Every variable is one the server reads (UPLOADER_* kept as aliases).
    known = {name for setting in config.SETTINGS for name in setting.env}
    assert set(env) <= known
    # A Service named "uploader" would inject UPLOADER_PORT=tcp://... otherwise.
    assert dep["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_one_pod_owns_the_volume() -> None:
    dep = deployment()
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    (pvc,) = by_kind("PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    data = volumes[mounts["/data"]]
    assert data["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_probes_resources_and_security() -> None:
    c = container()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/-/healthz"
        assert c[probe]["httpGet"]["port"] in ("http", 8080)
    limits = c["resources"]["limits"]
    assert limits["memory"] == "256Mi"
    assert str(limits["cpu"]) == "2"
    assert c["resources"]["requests"]["memory"]

    pod = deployment()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False


def server_grace(c: dict[str, Any]) -> float:
    args = c.get("args", [])
    for i, arg in enumerate(args):
        if arg == "--grace-period":
            return float(args[i + 1])
        if arg.startswith("--grace-period="):
            return float(arg.split("=", 1)[1])
    value = env_of(c).get("CACHESRV_GRACE_PERIOD", {}).get("value")
    return float(value) if value else SERVER_DEFAULT_GRACE


def test_kubernetes_waits_longer_than_the_server_drains() -> None:
    c = container()
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    budget = deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert budget > float(pre_stop[1]) + server_grace(c)
    assert server_grace(c) > SERVER_DEFAULT_GRACE


def test_the_deployment_command_line_starts_the_server(start_server: StartServer) -> None:
    """The container's args and environment, as Kubernetes passes them, on a real server."""
    c = container()
    env = {name: e["value"] for name, e in env_of(c).items() if "value" in e}
    env.pop("UPLOADER_HOST")  # the fixture binds to loopback and picks the port and data
    env.pop("UPLOADER_PORT")
    env.pop("UPLOADER_DIRECTORY")
    secret = secret_named("uploader-credentials")
    env.update(secret["stringData"])
    server = start_server(env=env, args=list(c.get("args", [])))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        url = server.url + c[probe]["httpGet"]["path"]
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
    # The example Secret's credentials are required for writes.
    put = curl(
        "-o", "/dev/null", "-w", "%{http_code}", "-T", "-", f"{server.url}/-/cache/k", input=b"x"
    )
    assert put.stdout == b"401"
    user_pass = secret["stringData"]["UPLOADER_UPLOAD_CREDENTIALS"]
    put = curl(
        "-o", "/dev/null", "-w", "%{http_code}", "-u", user_pass, "-T", "-",
        f"{server.url}/-/cache/k", input=b"x",
    )  # fmt: skip
    assert put.stdout == b"201"


def test_the_example_tokens_secret_works_where_the_deployment_mounts_it(
    start_server: StartServer, tmp_path: Path
) -> None:
    c = container()
    mount = next(m for m in c["volumeMounts"] if m["name"] == "tokens")
    volumes = deployment()["spec"]["template"]["spec"]["volumes"]
    volume = next(v for v in volumes if v["name"] == "tokens")
    secret = secret_named(volume["secret"]["secretName"])
    assert volume["secret"]["optional"] is True and mount["readOnly"] is True
    assert volume["secret"]["defaultMode"] & 0o040  # readable by the fsGroup the pod runs in
    tokens = tmp_path / "tokens"
    tokens.write_text(secret["stringData"]["tokens"])
    assert mount["mountPath"] + "/tokens" in (DEPLOY / "README.md").read_text()
    server = start_server(env={"CACHESRV_TOKENS_FILE": str(tokens)})
    token = secret["stringData"]["tokens"].split("\n")[1].split()[0]
    for path, expected in (("team-a/x", b"201"), ("team-b/x", b"403")):
        put = curl(
            "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Authorization: Bearer {token}",
            "-T", "-", f"{server.url}/{path}", input=b"x",
        )  # fmt: skip
        assert put.stdout == expected, path


def test_server_cli_knows_the_grace_period_flag() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cachesrv", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "--grace-period" in out


# -- Containerfile ---------------------------------------------------------------


def containerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    text = (DEPLOY / "Containerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def test_containerfile_is_multi_stage_and_runs_as_a_numeric_non_root_user() -> None:
    lines = containerfile()
    froms = [args for ins, args in lines if ins == "FROM"]
    assert len(froms) == 2
    assert all("python:3.11-slim" in f for f in froms)
    final = lines[[i for i, (ins, _) in enumerate(lines) if ins == "FROM"][-1] :]
    users = [args for ins, args in final if ins == "USER"]
    assert users, "the final stage has no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    runs = " ".join(args for ins, args in lines if ins == "RUN")
    assert "pip wheel" in runs and "--no-deps" in runs
    entry = [args for ins, args in final if ins == "ENTRYPOINT"]
    assert entry and yaml.safe_load(entry[-1]) == ["cachesrv", "serve"]
    assert ("EXPOSE", "8080") in final
    env = " ".join(args for ins, args in final if ins == "ENV")
    assert "UPLOADER_HOST=0.0.0.0" in env and "UPLOADER_DIRECTORY=/data" in env
    # Every COPY source exists (the build context is the repository root).
    root = DEPLOY.parent
    for ins, args in lines:
        if ins == "COPY" and not args.startswith("--from"):
            for source in shlex.split(args)[:-1]:
                assert (root / source).exists(), source
    # The image's user matches the Deployment's.
    pod = deployment()["spec"]["template"]["spec"]
    assert int(uid) == pod["securityContext"]["runAsUser"]


# -- Tekton ------------------------------------------------------------------------

VAR = re.compile(r"\$\(([^()\s]+)\)")


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def tekton_vars(node: Any) -> list[str]:
    """Tekton variable references ($(params.x) ...), not shell $(command)s."""
    prefixes = ("params.", "params[", "results.", "step.", "steps.", "tasks.", "workspaces.")
    return [v for s in strings(node) for v in VAR.findall(s) if v.startswith(prefixes)]


def tekton_docs() -> dict[str, dict[str, Any]]:
    return {
        p.relative_to(TEKTON).as_posix(): d for p in sorted(TEKTON.rglob("*.yaml")) for d in docs(p)
    }


def step_actions() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in tekton_docs().values() if d["kind"] == "StepAction"}


def declared(items: list[dict[str, Any]] | None) -> set[str]:
    return {item["name"] for item in items or []}


def required(params: list[dict[str, Any]]) -> set[str]:
    return {p["name"] for p in params if "default" not in p}


def check_param_refs(node: Any, params: set[str], where: str) -> None:
    for var in tekton_vars(node):
        match = re.fullmatch(r"params\.([A-Za-z0-9_-]+)", var)
        if var.startswith("params"):
            assert match, f"{where}: unsupported param reference $({var})"
            assert match.group(1) in params, f"{where}: $({var}) is not declared"


def script_env_refs(script: str) -> set[str]:
    return set(re.findall(r"\$\{?(PARAM_[A-Z0-9_]+|SECRET_[A-Z0-9_]+)", script))


def check_step_container(step: dict[str, Any], params: set[str], results_var: str,
                         results: set[str], where: str) -> None:  # fmt: skip
    """A step running the cache script: image, env wiring, results paths."""
    assert step["image"], where
    script = step["script"]
    assert script.startswith("#!/bin/sh\n"), f"{where}: not a POSIX sh script"
    assert not re.search(r"\$\(params", script), f"{where}: params go through env"
    check_param_refs({k: v for k, v in step.items() if k != "script"}, params, where)
    # Every param reaches the script (through env) or the container (image...).
    used = {m for m in re.findall(r"\$\(params\.([A-Za-z0-9_-]+)\)", str(step))}
    assert used == params, f"{where}: unused params {params - used}"
    env_names = {e["name"] for e in step["env"]}
    assert script_env_refs(script) <= env_names, f"{where}: script reads undeclared env"
    assert env_names <= script_env_refs(script), f"{where}: env never read by the script"
    written = set(re.findall(rf"\$\({re.escape(results_var)}\.([a-z0-9-]+)\.path\)", script))
    assert written == results, f"{where}: results written {written}, declared {results}"
    leftovers = [v for v in tekton_vars(script) if not v.startswith(results_var + ".")]
    assert not leftovers, f"{where}: unexpected Tekton variables {leftovers}"


@pytest.mark.parametrize("name", ["cache-fetch", "cache-upload"])
def test_step_action_is_well_formed(name: str) -> None:
    doc = tekton_docs()[f"stepaction/{name}/0.1/{name}.yaml"]
    assert doc["apiVersion"] == "tekton.dev/v1beta1"
    assert doc["kind"] == "StepAction"
    assert doc["metadata"]["name"] == name
    spec = doc["spec"]
    params = declared(spec["params"])
    assert len(params) == len(spec["params"])
    assert {"server-url", "key", "key-files", "paths", "workdir", "credentials"} <= params
    defaults = {p["name"]: p.get("default") for p in spec["params"]}
    assert defaults["server-url"] == "http://uploader:8080"
    results = declared(spec["results"])
    check_step_container(spec, params, "step.results", results, name)


def test_step_action_results_and_params() -> None:
    fetch = step_actions()["cache-fetch"]["spec"]
    upload = step_actions()["cache-upload"]["spec"]
    assert {"fetched", "matched-key"} <= declared(fetch["results"])
    assert "restore-keys" in declared(fetch["params"])
    defaults = {p["name"]: p.get("default") for p in upload["params"]}
    assert defaults["fail-on-error"] == "false"
    assert defaults["force-upload"] == "false"
    assert "max-age" in defaults


@pytest.mark.parametrize("name", ["cache-fetch", "cache-upload"])
def test_task_is_the_step_action_inlined(name: str) -> None:
    """For clusters without StepActions: the same step, results under $(results.)."""
    action = tekton_docs()[f"stepaction/{name}/0.1/{name}.yaml"]["spec"]
    task = tekton_docs()[f"task/{name}/0.1/{name}.yaml"]
    assert task["apiVersion"] == "tekton.dev/v1"
    assert task["kind"] == "Task"
    assert task["metadata"]["name"] == name
    spec = task["spec"]
    assert spec["params"] == action["params"]
    assert spec["results"] == action["results"]
    (step,) = spec["steps"]
    assert "ref" not in step
    assert step["image"] == action["image"]
    assert step["env"] == action["env"]
    assert step["script"] == action["script"].replace("$(step.results.", "$(results."), (
        f"task-{name}.yaml drifted from {name}.yaml: copy the script over"
    )
    check_step_container(step, declared(spec["params"]), "results", declared(spec["results"]), name)


def check_task_spec(spec: dict[str, Any], passed: set[str], where: str) -> dict[str, set[str]]:
    """An embedded taskSpec; returns {step name: results it can produce}."""
    params = declared(spec.get("params"))
    assert passed <= params, f"{where}: passes undeclared params {passed - params}"
    assert required(spec.get("params", [])) <= passed, f"{where}: required params not passed"
    workspaces = declared(spec.get("workspaces"))
    step_results: dict[str, set[str]] = {}
    for step in spec["steps"]:
        name = step["name"]
        if "ref" in step:
            action = step_actions().get(step["ref"]["name"])
            assert action, f"{where}/{name}: no StepAction {step['ref']['name']!r} in deploy/tekton"
            given = declared(step.get("params"))
            assert given <= declared(action["spec"]["params"]), f"{where}/{name}: unknown params"
            assert required(action["spec"]["params"]) <= given, f"{where}/{name}: missing params"
            step_results[name] = declared(action["spec"].get("results"))
            assert "image" not in step and "script" not in step
        else:
            assert step.get("image") and step.get("script"), f"{where}/{name}: image and script"
            step_results[name] = declared(step.get("results"))
    check_param_refs(spec, params, where)
    for var in tekton_vars(spec):
        if var.startswith("workspaces."):
            ws = re.fullmatch(r"workspaces\.([a-z0-9-]+)\.path", var)
            assert ws and ws.group(1) in workspaces, f"{where}: $({var})"
        elif var.startswith("steps."):
            ref = re.fullmatch(r"steps\.([a-z0-9-]+)\.results\.([a-z0-9-]+)", var)
            assert ref, f"{where}: $({var})"
            assert ref.group(2) in step_results.get(ref.group(1), set()), f"{where}: $({var})"
        elif var.startswith(("tasks.", "results.", "step.")):
            raise AssertionError(f"{where}: $({var}) is not available here")
    return step_results


def test_example_pipeline_references_resolve() -> None:
    pipeline = tekton_docs()["example-pipeline-go.yaml"]
    assert pipeline["apiVersion"] == "tekton.dev/v1"
    assert pipeline["kind"] == "Pipeline"
    spec = pipeline["spec"]
    params = declared(spec["params"])
    workspaces = declared(spec["workspaces"])
    tasks = spec["tasks"] + spec.get("finally", [])
    task_results = {
        t["name"]: declared(t["taskSpec"].get("results")) for t in tasks if "taskSpec" in t
    }
    for task in tasks:
        where = task["name"]
        assert "taskSpec" in task, f"{where}: the example embeds its tasks"
        bound = {w["name"]: w["workspace"] for w in task.get("workspaces", [])}
        assert set(bound.values()) <= workspaces
        assert declared(task["taskSpec"].get("workspaces")) == set(bound), where
        for after in task.get("runAfter", []):
            assert after in task_results, f"{where}: runAfter {after}"
        outer = {k: v for k, v in task.items() if k != "taskSpec"}
        check_param_refs(outer, params, where)
        for var in tekton_vars(outer):
            if var.startswith("tasks."):
                ref = re.fullmatch(r"tasks\.([a-z0-9-]+)\.results\.([a-z0-9-]+)", var)
                assert ref and ref.group(2) in task_results.get(ref.group(1), set()), var
        results = check_task_spec(task["taskSpec"], declared(task.get("params")), where)
        for result in task["taskSpec"].get("results", []):
            ref = re.fullmatch(r"\$\(steps\.([a-z0-9-]+)\.results\.([a-z0-9-]+)\)", result["value"])
            assert ref and ref.group(2) in results[ref.group(1)], result

    # The shape the issue asks for: fetch -> tests and lint -> upload in finally.
    names = [t["name"] for t in spec["tasks"]]
    assert names.index("restore-cache") < names.index("checks")
    (save,) = spec["finally"]
    refs = [s["ref"]["name"] for t in tasks for s in t["taskSpec"]["steps"] if "ref" in s]
    assert refs == ["cache-fetch", "cache-upload"]
    fetch = next(t for t in spec["tasks"] if t["name"] == "restore-cache")["taskSpec"]["steps"][0]
    fetch_params = {p["name"]: p["value"] for p in fetch["params"]}
    assert fetch_params["key"] == "go-$(params.os)-"
    assert fetch_params["key-files"].endswith("**/go.sum")
    assert fetch_params["restore-keys"] == "go-$(params.os)-"
    save_params = {p["name"]: p["value"] for p in save["taskSpec"]["steps"][0]["params"]}
    assert save_params["paths"] == fetch_params["paths"]
    checks = next(t for t in spec["tasks"] if t["name"] == "checks")["taskSpec"]
    cache_env = {e["name"]: e["value"] for e in checks["stepTemplate"]["env"]}
    assert set(cache_env) == {"GOCACHE", "GOLANGCI_LINT_CACHE"}
    for value in cache_env.values():
        rel = value.removeprefix("$(workspaces.source.path)/")
        assert rel in fetch_params["paths"].split()
    assert {s["name"] for s in checks["steps"]} == {"unit-tests", "golangci-lint"}


def test_step_action_secret_matches_the_deployment_secret() -> None:
    """The steps pick up the same optional Secret the server reads."""
    server_ref = env_of(container())["UPLOADER_UPLOAD_CREDENTIALS"]["valueFrom"]["secretKeyRef"]
    for action in step_actions().values():
        spec = action["spec"]
        defaults = {p["name"]: p.get("default") for p in spec["params"]}
        secrets = {
            e["name"]: e["valueFrom"]["secretKeyRef"] for e in spec["env"] if "valueFrom" in e
        }
        assert set(secrets) == {"SECRET_CREDENTIALS", "SECRET_TOKEN"}
        ref = secrets["SECRET_CREDENTIALS"]
        assert ref["name"] == "$(params.credentials-secret)"
        assert defaults["credentials-secret"] == server_ref["name"]
        assert ref["key"] == server_ref["key"]
        assert ref["optional"] is True
        # a pipeline's own token: another optional Secret, as deploy/README.md shows
        token = secrets["SECRET_TOKEN"]
        assert token == {"name": "$(params.token-secret)", "key": "token", "optional": True}
        assert defaults["token"] == ""


@pytest.mark.parametrize("kind", ["stepaction", "task"])
@pytest.mark.parametrize("name", ["cache-fetch", "cache-upload"])
def test_tekton_resources_are_laid_out_as_the_catalog_expects(kind: str, name: str) -> None:
    """<kind>/<name>/<version>/<name>.yaml with a README beside it, the version label
    and the catalog's annotations."""
    (version_dir,) = (TEKTON / kind / name).iterdir()
    assert (version_dir / "README.md").is_file()
    (doc,) = docs(version_dir / f"{name}.yaml")
    metadata = doc["metadata"]
    assert metadata["name"] == name
    assert metadata["labels"]["app.kubernetes.io/version"] == version_dir.name
    annotations = metadata["annotations"]
    for annotation in ("pipelines.minVersion", "categories", "tags", "displayName", "platforms"):
        assert annotations[f"tekton.dev/{annotation}"], annotation
    assert "mode" in {p["name"] for p in doc["spec"]["params"]}


# -- Kubernetes, several replicas on one bucket (deploy/kubernetes-s3) ----------------

KUBE_S3 = DEPLOY / "kubernetes-s3"


def s3_manifests() -> list[Path]:
    return sorted(p for p in KUBE_S3.glob("*.yaml") if p.name != "kustomization.yaml")


def s3_kind(kind: str) -> list[dict[str, Any]]:
    return [d for p in s3_manifests() for d in docs(p) if d["kind"] == kind]


def s3_deployment() -> tuple[dict[str, Any], dict[str, Any]]:
    (dep,) = s3_kind("Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return dep, c


@pytest.mark.parametrize("path", s3_manifests(), ids=lambda p: p.name)
def test_s3_manifest_is_valid_kubernetes(path: Path) -> None:
    for doc in docs(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_s3_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    (kust,) = docs(KUBE_S3 / "kustomization.yaml")
    assert kust["kind"] == "Kustomization"
    assert set(kust["resources"]) == {p.name for p in s3_manifests()} - {"s3-secret-example.yaml"}
    _, c = s3_deployment()
    assert c["image"].split(":")[0] in {i["name"] for i in kust.get("images", [])}


def test_s3_replicas_roll_one_at_a_time_and_a_drain_takes_at_most_one() -> None:
    dep, c = s3_deployment()
    assert dep["spec"]["replicas"] >= 2
    strategy = dep["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    (pdb,) = s3_kind("PodDisruptionBudget")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] < dep["spec"]["replicas"]
    # stateless: no claim, /data an emptyDir (the hot cache only)
    assert not s3_kind("PersistentVolumeClaim")
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/data"]]
    # the same Service as the single-node drop-in: pipelines keep their URL
    assert s3_kind("Service") == by_kind("Service")
    assert c["resources"]["limits"]["memory"] == "256Mi"
    budget = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert budget > float(c["lifecycle"]["preStop"]["exec"]["command"][1]) + server_grace(c)


def test_s3_settings_come_from_a_secret_the_server_understands() -> None:
    _, c = s3_deployment()
    (secret,) = [s for s in s3_kind("Secret") if s["metadata"]["name"] == "cachesrv-s3"]
    (source,) = c["envFrom"]
    assert source["secretRef"]["name"] == secret["metadata"]["name"]
    keys = set(secret["stringData"])
    assert "CACHESRV_STORE" in keys and {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= keys
    assert all(k == "CACHESRV_STORE" or k.startswith("AWS_") for k in keys)
    config.load(env=secret["stringData"])  # CACHESRV_STORE parses
    known = {name for setting in config.SETTINGS for name in setting.env}
    assert set(env_of(c)) <= known


def test_the_s3_deployment_command_line_starts_replicas_that_share_the_bucket(
    start_server: StartServer, seaweedfs: SeaweedFS, s3_url: str
) -> None:
    """The container's args and environment, the Secret pointed at the suite's
    SeaweedFS: two replicas, an upload through one read through the other."""
    _, c = s3_deployment()
    env = {name: e["value"] for name, e in env_of(c).items() if "value" in e}
    for name in ("UPLOADER_HOST", "UPLOADER_PORT", "UPLOADER_DIRECTORY"):
        env.pop(name)  # the fixture binds to loopback and picks the port and data
    env.update({**seaweedfs.env, "CACHESRV_STORE": s3_url})
    replicas = [start_server(env=env, args=list(c.get("args", []))) for _ in range(2)]
    put = curl(
        "-o", "/dev/null", "-w", "%{http_code}", "-T", "-", f"{replicas[0].url}/-/cache/k",
        input=b"shared",
    )  # fmt: skip
    assert put.stdout == b"201"
    assert curl(f"{replicas[1].url}/-/cache/k").stdout == b"shared"
