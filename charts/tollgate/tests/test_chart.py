#!/usr/bin/env python3
"""Tests of the Helm chart in charts/tollgate, run by `tests/chart.rs` (so by the project's
test command) or alone:

    TOLLGATE_BIN=target/debug/tollgate ENVOY_BIN=$(python3 -c 'import envoy, os; \
        print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))') \
        python3 charts/tollgate/tests/test_chart.py

With Helm's own engine (helm-python-sdk: Helm's Go SDK), for the default values and every mode:
lint; render; every object validated against the vendored Kubernetes and CRD schemas
(schemas/README.md); assertions on the objects (probes, security contexts, resources, the
grace period, NetworkPolicy only when enabled, no secret value anywhere); the values schema
rejects bad values; the config the chart writes passes `tollgate check`; the Envoy bootstrap
the init container renders, plus the chart's ready listener, is accepted by Envoy and answers
/ready; and the filters the Istio and Envoy Gateway objects carry are those of the bootstrap,
field by field, and accepted by Envoy.
"""

import copy
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

try:
    import helm_python as helm
    import jsonschema
    import referencing
    import referencing.jsonschema
    import yaml
except ImportError as e:  # A missing dependency fails the suite: it never skips.
    sys.stderr.write(
        f"FAIL: {e}. Install the test dependencies: pip install -r tests/requirements.txt\n"
    )
    sys.exit(2)

CHART = pathlib.Path(__file__).resolve().parent.parent
REPO = CHART.parent.parent
SCHEMAS = CHART / "tests" / "schemas"
RELEASE = "tg"
NAMESPACE = "llm"


def required_binary(var):
    path = os.environ.get(var)
    if not path or not pathlib.Path(path).is_file():
        sys.stderr.write(
            f"FAIL: {var} must name the {var.split('_')[0].lower()} binary (got {path!r}); "
            "run `cargo nextest run --test chart`, which sets it\n"
        )
        sys.exit(2)
    return path


TOLLGATE = required_binary("TOLLGATE_BIN")
ENVOY = required_binary("ENVOY_BIN")

# Distinctive fake secrets, in this process's environment (so in Helm's, which renders in
# process) and in the environment `tollgate` runs with. None may appear in anything rendered.
FAKE_SECRETS = {
    "OPENAI_API_KEY": "sk-FAKE-openai-7d1f0c93a2b4e5f6",
    "ANTHROPIC_API_KEY": "sk-ant-FAKE-anthropic-51c2e9d8",
    "AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKE0042",
    "AWS_SECRET_ACCESS_KEY": "FAKEsecretAccessKey/3b9c6a1e7f2d",
    "TOLLGATE_FEEDBACK_SECRET": "FAKE-feedback-signing-secret-0123456789abcdef",
    "TOLLGATE_REDIS_URL": "redis://:FAKE-redis-password-99@redis:6379/0",
    "TOLLGATE_CLICKHOUSE_PASSWORD": "FAKE-clickhouse-password-77",
    "TOLLGATE_ADMIN_TOKENS": "FAKE-admin-token-a1b2c3d4e5",
    "TOLLGATE_SIGNING_SECRET": "FAKE-signing-secret-f0e1d2c3b4a5",
}
os.environ.update(FAKE_SECRETS)

CONFIG = {
    "providers": {
        "openai": {"kind": "openai", "base_url": "https://api.openai.com/v1",
                   "credential": {"env": "OPENAI_API_KEY"}},
        "anthropic": {"kind": "anthropic", "base_url": "https://api.anthropic.com/v1",
                      "credential": {"env": "ANTHROPIC_API_KEY"}},
        "bedrock": {"kind": "bedrock", "aws": {
            "region": "us-east-1",
            "access_key_id": {"env": "AWS_ACCESS_KEY_ID"},
            "secret_access_key": {"env": "AWS_SECRET_ACCESS_KEY"}}},
        "vllm": {"kind": "openai_compatible", "base_url": "http://vllm.inference.svc.cluster.local:8000/v1"},
    },
    "models": {
        "gpt-4o-mini": {"targets": [{"provider": "openai", "model": "gpt-4o-mini"}]},
        "claude": {"targets": [{"provider": "anthropic", "model": "claude-sonnet-4-5"},
                               {"provider": "bedrock", "model": "anthropic.claude-3-5-sonnet-20240620-v1:0"}]},
        "llama": {"targets": [{"provider": "vllm", "model": "meta-llama/Llama-3.1-8B-Instruct"}]},
    },
    "keys": [{"id": "search-prod", "hash": "sha256:" + "6d" * 32, "tenant": "acme",
              "models": ["gpt-4o-mini", "claude"]}],
    "limits": {"max_request_body_bytes": 4194304},
    "feedback": {"secret": {"env": "TOLLGATE_FEEDBACK_SECRET"}},
    "budgets": {"redis": {"url_env": "TOLLGATE_REDIS_URL"}, "end_user_header": "x-llm-end-user",
                "limits": [{"id": "acme", "scope": "tenant", "name": "acme", "period": "monthly", "amount_usd": "500"}]},
}

SECRET_ENV = [
    {"name": "OPENAI_API_KEY", "secretName": "llm-providers", "key": "openai"},
    {"name": "ANTHROPIC_API_KEY", "secretName": "llm-providers", "key": "anthropic"},
    {"name": "AWS_ACCESS_KEY_ID", "secretName": "aws", "key": "access-key-id"},
    {"name": "AWS_SECRET_ACCESS_KEY", "secretName": "aws", "key": "secret-access-key"},
    {"name": "TOLLGATE_FEEDBACK_SECRET", "secretName": "tollgate", "key": "feedback"},
    {"name": "TOLLGATE_REDIS_URL", "secretName": "tollgate", "key": "redis-url"},
]

FULL = {"config": CONFIG, "secretEnv": SECRET_ENV,
        "secretFiles": [{"secretName": "vertex-sa", "mountPath": "/var/run/secrets/tollgate/vertex"}]}
ISTIO = {**FULL, "gateway": {"envoy": {"enabled": False}},
         "istio": {"enabled": True, "workloadSelector": {"app": "llm-client"}}}
# The key gate in a separate ext_authz filter (Istio's CUSTOM authorization, Envoy Gateway's
# SecurityPolicy) instead of ext_proc's request-headers phase.
EXT_AUTHZ = {"config": {"envoy": {"auth": "ext_authz"}}}
ISTIO_GATEWAY = {**FULL, "gateway": {"envoy": {"enabled": False}},
                 "istio": {"enabled": True, "context": "GATEWAY", "namespace": "istio-system",
                           "portNumber": 8080, "workloadSelector": {"istio": "ingressgateway"},
                           "extAuthz": {"paths": ["/v1/*"]}}}
TARGETS = [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "eg"}]
ENVOY_GATEWAY = {**FULL, "gateway": {"envoy": {"enabled": False}},
                 "envoyGateway": {"enabled": True, "namespace": "envoy-gateway-system", "targetRefs": TARGETS,
                                  "patchPolicy": {"enabled": True, "gatewayName": "eg",
                                                  "listenerName": "envoy-gateway-system/eg/http"}}}
CONTROL_PLANE = {"controlPlane": {"enabled": True,
                                  "adminTokensSecret": {"name": "tollgate-cp", "key": "admin-tokens"},
                                  "signingSecret": {"name": "tollgate-cp", "key": "signing"},
                                  "previousSigningSecret": {"name": "tollgate-cp", "key": "signing-previous"}}}
NETWORK_POLICY = {"networkPolicy": {
    "enabled": True, "providerCIDRs": ["162.159.140.0/24", "2606:4700::/32"],
    "loggerEgress": {"to": [{"podSelector": {"matchLabels": {"app": "clickhouse"}}}], "ports": [8123]},
    "extraEgress": [{"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"protocol": "TCP", "port": 8000}]}]}}
HPA = {"gateway": {"autoscaling": {"enabled": True, "customMetric": {"enabled": True}}}}
SERVICE_MONITOR = {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}}
CLICKHOUSE_LOGGER = {"logger": {"sink": "clickhouse", "clickhouse": {
    "url": "http://clickhouse.db:8123", "passwordSecret": {"name": "clickhouse", "key": "password"}},
    "persistence": {"enabled": True, "size": "5Gi"}}}


def merge(*parts):
    out = {}
    for p in parts:
        out = deep_merge(out, p)
    return out


def deep_merge(a, b):
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


MODES = {
    "default": {},
    "full-config": FULL,
    "full-config-ext-authz": merge(FULL, EXT_AUTHZ),
    "istio-sidecar": ISTIO,
    "istio-sidecar-ext-authz": merge(ISTIO, EXT_AUTHZ),
    "istio-ingress-gateway-ext-authz": merge(ISTIO_GATEWAY, EXT_AUTHZ),
    "envoy-gateway": ENVOY_GATEWAY,
    "envoy-gateway-ext-authz": merge(ENVOY_GATEWAY, EXT_AUTHZ),
    "control-plane": merge(FULL, CONTROL_PLANE),
    "control-plane-postgres": merge(CONTROL_PLANE, {"controlPlane": {
        "database": "postgres", "replicas": 2, "postgres": {"urlSecret": {"name": "tollgate-cp", "key": "database-url"}}}}),
    "network-policy": merge(FULL, NETWORK_POLICY),
    "hpa": merge(FULL, HPA),
    "service-monitor": merge(FULL, SERVICE_MONITOR),
    "logger-clickhouse": merge(FULL, CLICKHOUSE_LOGGER),
    "everything": merge(FULL, CONTROL_PLANE, NETWORK_POLICY, HPA, SERVICE_MONITOR, CLICKHOUSE_LOGGER),
    "istio-everything": merge(ISTIO, EXT_AUTHZ, CONTROL_PLANE, NETWORK_POLICY, HPA, SERVICE_MONITOR),
    "envoy-gateway-everything": merge(ENVOY_GATEWAY, EXT_AUTHZ, NETWORK_POLICY, HPA, SERVICE_MONITOR),
    "no-logger": merge(FULL, {"logger": {"enabled": False}, "gateway": {"podDisruptionBudget": {"enabled": False}}}),
}

_chart = None


def chart():
    global _chart
    if _chart is None:
        _chart = helm.Chart.load(str(CHART))
    return _chart


def render(values, namespace=NAMESPACE):
    """The rendered manifests: ({template: text}, [objects])."""
    out = chart().render(values, name=RELEASE, namespace=namespace)
    objects = []
    for name, text in sorted(out.items()):
        if name.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    return out, objects


def find(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    return found


def one(objects, kind, name=None):
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def containers(deployment, init=False):
    spec = deployment["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec.get("initContainers" if init else "containers", [])}


def run(cmd, env=None, check=True, timeout=60):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


# ------------------------------------------------------------------------------------------
# Schemas
# ------------------------------------------------------------------------------------------

K8S_FILES = {
    ("v1", "ConfigMap"): "configmap-v1",
    ("v1", "Service"): "service-v1",
    ("v1", "ServiceAccount"): "serviceaccount-v1",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaim-v1",
    ("apps/v1", "Deployment"): "deployment-apps-v1",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscaler-autoscaling-v2",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudget-policy-v1",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicy-networking-v1",
}
K8S_VERSIONS = sorted(p.name for p in (SCHEMAS / "kubernetes").iterdir())


def strict_crd(node):
    """A CRD's structural schema, rejecting undeclared fields (as `kubectl --validate=strict`
    does; the API server would silently prune them)."""
    if isinstance(node, dict):
        out = {k: strict_crd(v) for k, v in node.items() if not k.startswith("x-kubernetes-validations")}
        if node.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields") \
                and "additionalProperties" not in node:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [strict_crd(v) for v in node]
    return node


class Schemas:
    def __init__(self):
        self.k8s = {}
        for version in K8S_VERSIONS:
            for key, f in K8S_FILES.items():
                schema = json.loads((SCHEMAS / "kubernetes" / version / f"{f}.json").read_text())
                self.k8s[(version,) + key] = jsonschema.Draft202012Validator(schema)
        # Custom resources: their metadata is checked with Kubernetes' ObjectMeta.
        meta = json.loads((SCHEMAS / "kubernetes" / K8S_VERSIONS[-1] / "configmap-v1.json").read_text())
        object_meta = {"$defs": meta["$defs"], "$ref": meta["properties"]["metadata"]["$ref"]}
        self.crd = {}
        for f in (SCHEMAS / "crds").glob("*.json"):
            d = json.loads(f.read_text())
            schema = strict_crd(d["openAPIV3Schema"])
            # Every object has these, whether its CRD's schema names them or not.
            schema["properties"]["apiVersion"] = {"const": f"{d['group']}/{d['version']}"}
            schema["properties"]["kind"] = {"const": d["kind"]}
            schema["properties"]["metadata"] = {"$ref": "urn:objectmeta"}
            registry = referencing.Registry().with_resource(
                "urn:objectmeta", referencing.jsonschema.DRAFT202012.create_resource(object_meta))
            key = (f"{d['group']}/{d['version']}", d["kind"])
            self.crd[key] = jsonschema.Draft202012Validator(schema, registry=registry)
        mesh = json.loads((SCHEMAS / "istio" / "meshconfig-extensionproviders.json").read_text())
        self.mesh = jsonschema.Draft202012Validator(mesh)

    def validate(self, obj):
        """Validates `obj`; returns the schema set(s) used."""
        key = (obj["apiVersion"], obj["kind"])
        name = f"{obj['kind']}/{obj['metadata'].get('name')}"
        if key in K8S_FILES:
            for version in K8S_VERSIONS:
                errors = sorted(self.k8s[(version,) + key].iter_errors(obj), key=lambda e: list(e.path))
                if errors:
                    raise AssertionError(f"{name} is invalid for Kubernetes {version}: "
                                         + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5]))
            return "kubernetes"
        if key in self.crd:
            errors = sorted(self.crd[key].iter_errors(obj), key=lambda e: list(e.path))
            if errors:
                raise AssertionError(f"{name} is invalid for its CRD: "
                                     + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5]))
            return "crd"
        raise AssertionError(f"no vendored schema for {key} ({name}): vendor it (tests/schemas/README.md)")


_schemas = None


def schemas():
    global _schemas
    if _schemas is None:
        _schemas = Schemas()
    return _schemas


# ------------------------------------------------------------------------------------------
# Envoy and the bootstrap
# ------------------------------------------------------------------------------------------

def tollgate_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_LOG")}
    env.update(FAKE_SECRETS)
    return env


def bootstrap_for(deployment, configmap, tmp, listen=None, admin=None):
    """Runs what the gateway's init container runs (its args, with the ConfigMap's config file
    and a temporary output path) and returns the bootstrap's text."""
    init = containers(deployment, init=True)["envoy-bootstrap"]
    args = list(init["args"])
    cfg = tmp / "config.yaml"
    cfg.write_text(configmap["data"]["config.yaml"])
    out = tmp / "envoy.yaml"
    args[args.index("--config") + 1] = str(cfg)
    args[args.index("--output") + 1] = str(out)
    if listen:
        args[args.index("--listen") + 1] = listen
    if admin:
        args[args.index("--admin") + 1] = admin
    run([TOLLGATE] + args, env=tollgate_env())
    return out.read_text()


def http_filters(bootstrap):
    listener = next(l for l in bootstrap["static_resources"]["listeners"] if l["name"] == "llm")
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return {f["name"]: f for f in hcm["http_filters"]}


def envoy_validate(config, tmp, name, extra=()):
    path = tmp / name
    path.write_text(yaml.safe_dump(config) if isinstance(config, dict) else config)
    p = run([ENVOY, "--mode", "validate", "-c", str(path), "--log-level", "warn", *extra], check=False)
    assert p.returncode == 0, f"Envoy refused {name}:\n{p.stdout}\n{p.stderr}"
    return p


def grpc_cluster(name):
    return {
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 50051}}}}]}]},
    }


def minimal_bootstrap(filters, clusters):
    """A listener whose HTTP filter chain is `filters` + the router, and `clusters`."""
    return {
        "static_resources": {
            "listeners": [{
                "name": "attach", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "attach",
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                            {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
                        "http_filters": filters + [{"name": "envoy.filters.http.router", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                    }}]}],
            }],
            "clusters": [grpc_cluster(c) for c in clusters],
        },
    }


def without_cluster(typed_config):
    """`typed_config` with its gRPC service's cluster name taken out (it names the cluster that
    reaches serve, which each environment names its own way)."""
    c = copy.deepcopy(typed_config)
    c["grpc_service"]["envoy_grpc"].pop("cluster_name")
    return c


def duration(value):
    """An Envoy/Kubernetes duration ("2s", "2000ms") in milliseconds."""
    m = re.fullmatch(r"([0-9.]+)(ms|s|m)", str(value))
    assert m, f"not a duration: {value!r}"
    return float(m.group(1)) * {"ms": 1, "s": 1000, "m": 60000}[m.group(2)]


STATUS = {"ServiceUnavailable": 503, "InternalServerError": 500, "Forbidden": 403}


# ------------------------------------------------------------------------------------------
# The tests
# ------------------------------------------------------------------------------------------

class ChartTest(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.tmp = pathlib.Path(tempfile.mkdtemp(prefix="tollgate-chart-"))
        cls.rendered = {mode: render(values) for mode, values in MODES.items()}

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def objects(self, mode):
        return self.rendered[mode][1]

    def gateway(self, mode):
        return one(self.objects(mode), "Deployment", f"{RELEASE}-tollgate")

    def configmap(self, mode):
        return one(self.objects(mode), "ConfigMap", f"{RELEASE}-tollgate-config")

    # -- lint and schema validation ---------------------------------------------------------

    def test_lint_every_mode(self):
        for mode, values in MODES.items():
            with self.subTest(mode=mode):
                report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
                problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
                self.assertEqual(problems, [], f"helm lint ({mode})")

    def test_every_object_validates_against_kubernetes_and_crd_schemas(self):
        seen = set()
        for mode in MODES:
            with self.subTest(mode=mode):
                objects = self.objects(mode)
                self.assertTrue(objects)
                for obj in objects:
                    schemas().validate(obj)
                    seen.add(obj["kind"])
        # Every kind the chart can render was rendered by some mode, so was validated.
        self.assertEqual(seen, {k for _, k in K8S_FILES} | {k for _, k in schemas().crd})

    def test_schema_validation_catches_a_bad_object(self):
        # The validators are not vacuous: a typo and a wrong type are caught, in core kinds and CRDs.
        deployment = copy.deepcopy(self.gateway("default"))
        deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
        with self.assertRaisesRegex(AssertionError, "readinesProbe"):
            schemas().validate(deployment)
        envoy_filter = copy.deepcopy(one(self.objects("istio-sidecar"), "EnvoyFilter"))
        envoy_filter["spec"]["configPatches"][0]["match"]["contxt"] = "GATEWAY"
        with self.assertRaisesRegex(AssertionError, "contxt"):
            schemas().validate(envoy_filter)
        policy = copy.deepcopy(one(self.objects("envoy-gateway"), "EnvoyExtensionPolicy"))
        policy["spec"]["extProc"][0]["failOpen"] = "no"
        with self.assertRaises(AssertionError):
            schemas().validate(policy)

    def test_values_schema_rejects_bad_values(self):
        bad = {
            "unknown top-level key": {"replica": 3},
            "unknown nested key": {"gateway": {"envoy": {"prot": 8080}}},
            "wrong type": {"gateway": {"replicas": "two"}},
            "wrong type in a list": {"secretEnv": [{"name": "X", "secretName": "s", "key": 1}]},
            "bad enum": {"logger": {"sink": "kafka"}},
            "out of range": {"gateway": {"envoy": {"port": 70000}}},
            "unknown config section": {"config": {"provider": {}}},
            "listen is the chart's": {"config": {"listen": {"admin": "0.0.0.0:1"}}},
            "a secret value instead of a reference": {"secretEnv": [{"name": "OPENAI_API_KEY", "value": "sk-x"}]},
        }
        for what, values in bad.items():
            with self.subTest(what=what):
                with self.assertRaises(helm.HelmValuesError):
                    chart().validate_schema(values)
                with self.assertRaises(helm.HelmValuesError):
                    chart().render(values, name=RELEASE, namespace=NAMESPACE)
        for mode, values in MODES.items():
            with self.subTest(mode=mode):
                chart().validate_schema(values)

    def test_values_yaml_schema_and_readme_agree(self):
        values = yaml.safe_load((CHART / "values.yaml").read_text())
        schema = json.loads((CHART / "values.schema.json").read_text())
        readme = (CHART / "README.md").read_text()

        # Documented as one row each: resources, probe timings, rolling update settings.
        compound = {"resources", "startupProbe", "readinessProbe", "livenessProbe", "rollingUpdate"}

        def leaves(node, schema_node, prefix):
            props = schema_node.get("properties")
            if isinstance(node, dict) and props and node and prefix.rstrip(".").split(".")[-1] not in compound:
                for k, v in node.items():
                    self.assertIn(k, props, f"{prefix}{k} is in values.yaml but not in values.schema.json")
                    yield from leaves(v, props[k], f"{prefix}{k}.")
            else:
                yield prefix.rstrip(".")

        for key in leaves(values, schema, ""):
            self.assertIn(f"`{key}`", readme, f"README.md's values table misses `{key}`")

        def schema_keys(node, prefix):
            for k, v in node.get("properties", {}).items():
                yield f"{prefix}{k}"
                if k not in compound:
                    yield from schema_keys(v, f"{prefix}{k}.")

        flat = set()

        def walk(node, prefix):
            if isinstance(node, dict):
                for k, v in node.items():
                    flat.add(f"{prefix}{k}")
                    walk(v, f"{prefix}{k}.")

        walk(values, "")
        for key in schema_keys(schema, ""):
            if key.startswith("config.") or key == "global":
                continue
            self.assertTrue(key in flat, f"values.schema.json declares {key}, values.yaml has no default for it")

    def test_config_sections_match_tollgate(self):
        # The schema's `config` sections are RawConfig's fields (core/src/config.rs) but `listen`.
        source = (REPO / "core" / "src" / "config.rs").read_text()
        body = source[source.index("pub struct RawConfig {"):]
        body = body[:body.index("\n}\n")]
        fields = set(re.findall(r"^\s*pub ([a-z_]+):", body, re.M))
        schema = json.loads((CHART / "values.schema.json").read_text())
        self.assertEqual(set(schema["properties"]["config"]["properties"]), fields - {"listen"})

    # -- what every mode renders ------------------------------------------------------------

    def test_no_secret_is_ever_materialised(self):
        for mode in MODES:
            with self.subTest(mode=mode):
                text, objects = self.rendered[mode]
                self.assertEqual(find(objects, "Secret"), [], "the chart must not create Secrets")
                everything = "\n".join(text.values())
                for var, value in FAKE_SECRETS.items():
                    self.assertNotIn(value, everything, f"the value of {var} leaked into the output")
                for d in find(objects, "Deployment"):
                    spec = d["spec"]["template"]["spec"]
                    for c in spec.get("containers", []) + spec.get("initContainers", []):
                        for e in c.get("env", []):
                            if e["name"] in FAKE_SECRETS:
                                self.assertNotIn("value", e, f"{e['name']} must come from a Secret")
                                self.assertIn("secretKeyRef", e["valueFrom"])
        # The references are there: serve and the bootstrap renderer read each from its Secret.
        gw = self.gateway("full-config")
        for c in [containers(gw)["serve"], containers(gw, init=True)["envoy-bootstrap"]]:
            refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"]}
            for s in SECRET_ENV:
                self.assertEqual(refs[s["name"]], {"name": s["secretName"], "key": s["key"]})
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            self.assertTrue(mounts["/var/run/secrets/tollgate/vertex"]["readOnly"])
        cp = containers(one(self.objects("control-plane"), "Deployment", f"{RELEASE}-tollgate-control-plane"))["control-plane"]
        self.assertEqual({e["name"] for e in cp["env"]},
                         {"TOLLGATE_ADMIN_TOKENS", "TOLLGATE_SIGNING_SECRET", "TOLLGATE_SIGNING_SECRET_PREVIOUS"})
        logger = containers(one(self.objects("logger-clickhouse"), "Deployment", f"{RELEASE}-tollgate-logger"))["logger"]
        self.assertEqual(logger["env"], [{"name": "TOLLGATE_CLICKHOUSE_PASSWORD", "valueFrom": {
            "secretKeyRef": {"name": "clickhouse", "key": "password"}}}])

    def test_pods_are_locked_down(self):
        for mode in MODES:
            for d in find(self.objects(mode), "Deployment"):
                with self.subTest(mode=mode, deployment=d["metadata"]["name"]):
                    spec = d["spec"]["template"]["spec"]
                    psc = spec["securityContext"]
                    self.assertTrue(psc["runAsNonRoot"])
                    self.assertNotEqual(psc["runAsUser"], 0)
                    self.assertEqual(psc["seccompProfile"], {"type": "RuntimeDefault"})
                    self.assertFalse(spec["automountServiceAccountToken"])
                    for c in spec.get("containers", []) + spec.get("initContainers", []):
                        sc = c["securityContext"]
                        self.assertTrue(sc["readOnlyRootFilesystem"], c["name"])
                        self.assertFalse(sc["allowPrivilegeEscalation"], c["name"])
                        self.assertEqual(sc["capabilities"]["drop"], ["ALL"], c["name"])
                        self.assertTrue(sc["runAsNonRoot"], c["name"])
                        for kind in ("requests", "limits"):
                            self.assertEqual(set(c["resources"][kind]), {"cpu", "memory"}, (c["name"], kind))

    def test_probes(self):
        for mode in MODES:
            with self.subTest(mode=mode):
                gw = self.gateway(mode)
                serve = containers(gw)["serve"]
                config = yaml.safe_load(self.configmap(mode)["data"]["config.yaml"])
                admin_port = int(config["listen"]["admin"].rsplit(":", 1)[1])
                self.assertTrue(config["listen"]["admin"].startswith("0.0.0.0:"), "the kubelet probes the pod IP")
                ports = {p["name"]: p["containerPort"] for p in serve["ports"]}
                self.assertEqual(ports["admin"], admin_port)
                # The paths serve's admin router answers (src/serve.rs).
                serve_rs = (REPO / "src" / "serve.rs").read_text()
                for probe, path in [("startupProbe", "/startupz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]:
                    self.assertEqual(serve[probe]["httpGet"], {"path": path, "port": "admin"})
                    self.assertIn(f'.route("{path}"', serve_rs)
                envoy = containers(gw).get("envoy")
                if MODES[mode].get("gateway", {}).get("envoy", {}).get("enabled", True):
                    self.assertEqual(envoy["readinessProbe"]["httpGet"], {"path": "/ready", "port": "envoy-ready"})
                    self.assertEqual(envoy["startupProbe"]["httpGet"], {"path": "/ready", "port": "envoy-ready"})
                    self.assertEqual(envoy["livenessProbe"]["tcpSocket"], {"port": "envoy-ready"})
                else:
                    self.assertIsNone(envoy)
                for d in find(self.objects(mode), "Deployment"):
                    for c in d["spec"]["template"]["spec"]["containers"]:
                        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                            self.assertIn(probe, c, (d["metadata"]["name"], c["name"]))

    def test_socket_and_config_line_up(self):
        # serve listens where Envoy's bootstrap looks (a socket in the volume both mount), or on
        # TCP for a mesh, behind the serve Service.
        for mode in MODES:
            with self.subTest(mode=mode):
                gw = self.gateway(mode)
                config = yaml.safe_load(self.configmap(mode)["data"]["config.yaml"])
                grpc = config["listen"]["grpc"]
                cs = containers(gw)
                if "envoy" in cs:
                    self.assertTrue(grpc.startswith("unix:"))
                    sock_dir = os.path.dirname(grpc[len("unix:"):])
                    for name in ("serve", "envoy"):
                        self.assertIn(sock_dir, [m["mountPath"] for m in cs[name]["volumeMounts"] if m["name"] == "socket"])
                    self.assertEqual(find(self.objects(mode), "Service", f"{RELEASE}-tollgate-serve"), [])
                else:
                    self.assertEqual(grpc, "0.0.0.0:50051")
                    svc = one(self.objects(mode), "Service", f"{RELEASE}-tollgate-serve")
                    self.assertEqual(svc["spec"]["ports"][0]["appProtocol"], "grpc")
                    self.assertEqual(svc["spec"]["ports"][0]["name"], "grpc")
                if MODES[mode].get("logger", {}).get("enabled", True):
                    self.assertEqual(config["logging"]["address"], f"{RELEASE}-tollgate-logger.{NAMESPACE}.svc.cluster.local:4317")
                    spool = [m for m in cs["serve"]["volumeMounts"] if m["name"] == "spool"][0]
                    self.assertEqual(config["logging"]["spool_dir"], spool["mountPath"])

    def test_the_config_the_chart_writes_passes_tollgate_check(self):
        for mode in ("default", "full-config", "full-config-ext-authz", "istio-sidecar", "envoy-gateway"):
            with self.subTest(mode=mode):
                path = self.tmp / f"check-{mode}.yaml"
                path.write_text(self.configmap(mode)["data"]["config.yaml"])
                out = run([TOLLGATE, "check", str(path)], env=tollgate_env())
                self.assertIn(": ok", out.stdout)

    def test_network_policy_only_when_enabled(self):
        for mode, values in MODES.items():
            with self.subTest(mode=mode):
                policies = find(self.objects(mode), "NetworkPolicy")
                if not values.get("networkPolicy", {}).get("enabled"):
                    self.assertEqual(policies, [])
                    continue
                deployments = find(self.objects(mode), "Deployment")
                # One per component, each denying by default (both policy types) ...
                self.assertEqual(len(policies), len(deployments))
                for p in policies:
                    self.assertEqual(p["spec"]["policyTypes"], ["Ingress", "Egress"])
                    first = p["spec"]["egress"][0]
                    # ... with DNS as its first egress rule.
                    self.assertEqual(sorted((x["protocol"], x["port"]) for x in first["ports"]), [("TCP", 53), ("UDP", 53)])
                gw = one(policies, "NetworkPolicy", f"{RELEASE}-tollgate")
                cidrs = [peer["ipBlock"]["cidr"] for rule in gw["spec"]["egress"] for peer in rule.get("to", []) if "ipBlock" in peer]
                self.assertIn("162.159.140.0/24", cidrs)
                self.assertIn("2606:4700::/32", cidrs)
                # Every pod selector of a policy selects some Deployment's pods.
                for p in policies:
                    sel = p["spec"]["podSelector"]["matchLabels"]
                    self.assertTrue(any(sel.items() <= d["spec"]["template"]["metadata"]["labels"].items() for d in deployments))

    def test_grace_period_covers_the_drain(self):
        for mode in MODES:
            with self.subTest(mode=mode):
                spec = self.gateway(mode)["spec"]["template"]["spec"]
                drain = chart().merge_values(MODES[mode])["gateway"]["drain"]
                total = drain["preDrainWaitSeconds"] + drain["timeoutSeconds"] + drain["slackSeconds"]
                self.assertGreaterEqual(spec["terminationGracePeriodSeconds"], total)
                cs = containers(self.gateway(mode))
                # serve drains itself (readyz 503 for the pre-drain wait, then in-flight streams
                # up to the timeout), from the config the chart writes; no preStop sleep.
                self.assertNotIn("lifecycle", cs["serve"])
                config = yaml.safe_load(self.configmap(mode)["data"]["config.yaml"])
                self.assertEqual(
                    config["shutdown"],
                    {
                        "pre_drain_wait_ms": drain["preDrainWaitSeconds"] * 1000,
                        "drain_timeout_ms": drain["timeoutSeconds"] * 1000,
                        # Half the slack bounds serve's last flush (settlements, log events).
                        "flush_timeout_ms": min(drain["slackSeconds"] * 500, 60000),
                    },
                )
                if "envoy" in cs:
                    envoy_sleep = cs["envoy"]["lifecycle"]["preStop"]["sleep"]["seconds"]
                    self.assertEqual(envoy_sleep, drain["preDrainWaitSeconds"] + drain["timeoutSeconds"])
                    self.assertLess(envoy_sleep, spec["terminationGracePeriodSeconds"])

    def test_grace_period_invariant_is_enforced(self):
        drain = {"preDrainWaitSeconds": 5, "timeoutSeconds": 30, "slackSeconds": 5}
        with self.assertRaises(helm.HelmRenderError) as e:
            render({"gateway": {"drain": drain, "terminationGracePeriodSeconds": 39}})
        self.assertIn("gateway.terminationGracePeriodSeconds (39) is shorter than the drain", str(e.exception))
        self.assertIn("5 + 30 + 5 = 40", str(e.exception))
        _, objects = render({"gateway": {"drain": drain, "terminationGracePeriodSeconds": 40}})
        self.assertEqual(one(objects, "Deployment", f"{RELEASE}-tollgate")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], 40)
        _, objects = render({"gateway": {"drain": drain}})
        self.assertEqual(one(objects, "Deployment", f"{RELEASE}-tollgate")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], 40)

    def test_cross_value_checks_fail_clearly(self):
        cases = [
            ({"istio": {"enabled": True, "workloadSelector": {"app": "x"}}}, "set gateway.envoy.enabled=false"),
            ({"gateway": {"envoy": {"enabled": False}}, "istio": {"enabled": True}}, "istio.workloadSelector is required"),
            ({"gateway": {"envoy": {"enabled": False}}, "envoyGateway": {"enabled": True}}, "envoyGateway.targetRefs is required"),
            ({"controlPlane": {"enabled": True}}, "controlPlane.adminTokensSecret.name and .key are required"),
            ({"gateway": {"podDisruptionBudget": {"minAvailable": 1}}}, "exactly one of maxUnavailable and minAvailable"),
            ({"logger": {"replicas": 2, "persistence": {"enabled": True}}}, "logger.replicas > 1"),
        ]
        for values, message in cases:
            with self.subTest(message=message):
                with self.assertRaises(helm.HelmRenderError) as e:
                    render(values)
                self.assertIn(message, str(e.exception))

    def test_hpa_pdb_topology_and_service_monitor(self):
        objects = self.objects("everything")
        hpa = one(objects, "HorizontalPodAutoscaler")
        self.assertEqual(hpa["spec"]["scaleTargetRef"]["name"], f"{RELEASE}-tollgate")
        self.assertEqual([m["type"] for m in hpa["spec"]["metrics"]], ["Resource", "Pods"])
        self.assertNotIn("replicas", self.gateway("everything")["spec"], "the HPA owns the replica count")
        self.assertEqual(find(self.objects("default"), "HorizontalPodAutoscaler"), [])
        self.assertEqual(self.gateway("default")["spec"]["replicas"], 2)
        pdb = one(objects, "PodDisruptionBudget")
        self.assertEqual(pdb["spec"]["selector"]["matchLabels"], self.gateway("everything")["spec"]["selector"]["matchLabels"])
        self.assertEqual(find(self.objects("no-logger"), "PodDisruptionBudget"), [])
        spread = self.gateway("default")["spec"]["template"]["spec"]["topologySpreadConstraints"]
        self.assertEqual([s["topologyKey"] for s in spread], ["topology.kubernetes.io/zone", "kubernetes.io/hostname"])
        sm = one(objects, "ServiceMonitor")
        metrics = one(objects, "Service", f"{RELEASE}-tollgate-metrics")
        self.assertTrue(sm["spec"]["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items())
        self.assertEqual({e["port"] for e in sm["spec"]["endpoints"]}, {p["name"] for p in metrics["spec"]["ports"]})
        self.assertEqual(sm["metadata"]["labels"]["release"], "kube-prometheus-stack")
        self.assertEqual(find(self.objects("default"), "ServiceMonitor"), [])
        # The client-facing Service never exposes the admin ports.
        gw_svc = one(objects, "Service", f"{RELEASE}-tollgate")
        self.assertEqual([p["name"] for p in gw_svc["spec"]["ports"]], ["http"])

    def test_logger_and_control_plane(self):
        logger = containers(one(self.objects("default"), "Deployment", f"{RELEASE}-tollgate-logger"))["logger"]
        self.assertEqual(logger["args"][:6], ["logger", "--listen", "0.0.0.0:4317", "--sink", "ndjson", "--data-dir"])
        self.assertEqual(logger["readinessProbe"]["grpc"], {"port": 4317, "service": "tollgate.logger.v1.LogIngest"})
        ch = containers(one(self.objects("logger-clickhouse"), "Deployment", f"{RELEASE}-tollgate-logger"))["logger"]
        self.assertIn("--clickhouse-url", ch["args"])
        self.assertEqual(one(self.objects("logger-clickhouse"), "Deployment", f"{RELEASE}-tollgate-logger")["spec"]["strategy"]["type"], "Recreate")
        # The CLI the chart calls exists with those flags.
        help_text = run([TOLLGATE, "logger", "--help"]).stdout
        for flag in [a for a in logger["args"] + ch["args"] if a.startswith("--")]:
            self.assertIn(flag, help_text)
        help_text = run([TOLLGATE, "envoy-bootstrap", "--help"]).stdout
        init = containers(self.gateway("default"), init=True)["envoy-bootstrap"]
        for flag in [a for a in init["args"] if a.startswith("--")]:
            self.assertIn(flag, help_text)
        self.assertEqual(find(self.objects("default"), "Deployment", f"{RELEASE}-tollgate-control-plane"), [])
        cp = one(self.objects("control-plane"), "Deployment", f"{RELEASE}-tollgate-control-plane")
        self.assertEqual(containers(cp)["control-plane"]["args"][0], "control-plane")
        self.assertEqual(find(self.objects("control-plane-postgres"), "PersistentVolumeClaim"), [])

    # -- Envoy: the bootstrap and the ready listener ----------------------------------------

    def test_envoy_accepts_the_bootstrap_and_the_ready_listener(self):
        for mode in ("default", "full-config", "full-config-ext-authz"):
            with self.subTest(mode=mode):
                gw = self.gateway(mode)
                text = bootstrap_for(gw, self.configmap(mode), self.tmp)
                for value in FAKE_SECRETS.values():
                    self.assertNotIn(value, text, "a secret reached Envoy's bootstrap")
                envoy = containers(gw)["envoy"]
                args = envoy["args"]
                extra = ["--config-yaml", args[args.index("--config-yaml") + 1]]
                envoy_validate(text, self.tmp, f"bootstrap-{mode}.yaml", extra)
                boot = yaml.safe_load(text)
                self.assertEqual(boot["admin"]["address"]["socket_address"]["address"], "127.0.0.1")
                limit = chart().merge_values(MODES[mode])["config"].get("limits", {}).get("max_request_body_bytes", 8388608)
                self.assertEqual(http_filters(boot)["envoy.filters.http.buffer"]["typed_config"]["max_request_bytes"], limit)

    def test_ready_listener_answers_with_real_envoy(self):
        gw = self.gateway("default")
        config = yaml.safe_load(self.configmap("default")["data"]["config.yaml"])
        # A provider on an address (no DNS to wait for) stands in for the real ones.
        config["providers"] = {"local": {"kind": "openai_compatible", "base_url": "http://127.0.0.1:9/v1"}}
        cm = {"data": {"config.yaml": yaml.safe_dump(config)}}
        text = bootstrap_for(gw, cm, self.tmp, listen="127.0.0.1:0", admin="127.0.0.1:0")
        args = containers(gw)["envoy"]["args"]
        ready = json.loads(args[args.index("--config-yaml") + 1])
        self.assertEqual(ready["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"], 9902)
        ready["static_resources"]["listeners"][0]["address"]["socket_address"].update(address="127.0.0.1", port_value=0)
        admin_port_file = self.tmp / "admin-address"
        boot = self.tmp / "live.yaml"
        boot.write_text(text)
        proc = subprocess.Popen(
            [ENVOY, "-c", str(boot), "--config-yaml", json.dumps(ready), "--disable-hot-restart",
             "--admin-address-path", str(admin_port_file), "--log-level", "warn", "--concurrency", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.time() + 20
            while not (admin_port_file.exists() and admin_port_file.read_text().strip()):
                self.assertIsNone(proc.poll(), "Envoy exited")
                self.assertLess(time.time(), deadline, "Envoy's admin did not come up")
                time.sleep(0.05)
            admin = admin_port_file.read_text().strip()
            listeners = json.loads(urllib.request.urlopen(f"http://{admin}/listeners?format=json", timeout=5).read())
            port = next(l["local_address"]["socket_address"]["port_value"]
                        for l in listeners["listener_statuses"] if l["name"] == "ready")
            while True:
                try:
                    r = urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5)
                    break
                except OSError:
                    self.assertLess(time.time(), deadline, "the ready listener did not answer")
                    time.sleep(0.1)
            self.assertEqual(r.status, 200)
            with self.assertRaises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/anything-else", timeout=5)
            self.assertEqual(e.exception.code, 404)
            # /stats/prometheus is routed to the admin cluster (here its port, the chart's 9901, is
            # not this Envoy's ephemeral admin port: any answer but the catch-all 404 shows the route).
            try:
                code = urllib.request.urlopen(f"http://127.0.0.1:{port}/stats/prometheus", timeout=5).status
            except urllib.error.HTTPError as err:
                code = err.code
            self.assertNotEqual(code, 404)
            # Failing health checks (what a drain does) turns /ready to 503.
            urllib.request.urlopen(urllib.request.Request(f"http://{admin}/healthcheck/fail", method="POST"), timeout=5)
            with self.assertRaises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5)
            self.assertEqual(e.exception.code, 503)
        finally:
            proc.kill()
            proc.communicate(timeout=10)
        # In the pod, the admin cluster points at the port the bootstrap's admin listener uses.
        cluster = ready["static_resources"]["clusters"][0]
        admin_port = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"]
        real = yaml.safe_load(bootstrap_for(gw, self.configmap("default"), self.tmp))
        self.assertEqual(admin_port, real["admin"]["address"]["socket_address"]["port_value"])

    # -- the mesh attachments carry the bootstrap's filters ---------------------------------

    def bootstrap_filters(self, mode):
        """The bootstrap the gateway shape renders for the same config, and its filters."""
        values = copy.deepcopy(MODES[mode])
        values.setdefault("gateway", {}).setdefault("envoy", {})["enabled"] = False
        values = deep_merge(values, {"gateway": {"envoy": {"enabled": True}}, "istio": {"enabled": False},
                                     "envoyGateway": {"enabled": False}})
        _, objects = render(values)
        gw = one(objects, "Deployment", f"{RELEASE}-tollgate")
        cm = one(objects, "ConfigMap", f"{RELEASE}-tollgate-config")
        return http_filters(yaml.safe_load(bootstrap_for(gw, cm, self.tmp)))

    def test_envoyfilter_carries_the_bootstrap_filters_and_envoy_accepts_them(self):
        for mode in ("istio-sidecar", "istio-sidecar-ext-authz", "istio-ingress-gateway-ext-authz"):
            with self.subTest(mode=mode):
                text, objects = self.rendered[mode]
                ext_authz = MODES[mode]["config"].get("envoy", {}).get("auth") == "ext_authz"
                ef = one(objects, "EnvoyFilter")
                patches = ef["spec"]["configPatches"]
                values = MODES[mode]["istio"]
                for p in patches:
                    self.assertEqual(p["applyTo"], "HTTP_FILTER")
                    self.assertEqual(p["patch"]["operation"], "INSERT_BEFORE")
                    self.assertEqual(p["match"]["context"], values.get("context", "SIDECAR_INBOUND"))
                    self.assertEqual(p["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"], "envoy.filters.http.router")
                    if "portNumber" in values:
                        self.assertEqual(p["match"]["listener"]["portNumber"], values["portNumber"])
                self.assertEqual(ef["metadata"]["namespace"], values.get("namespace", NAMESPACE))
                self.assertEqual(ef["spec"]["workloadSelector"]["labels"], values["workloadSelector"])
                inserted = [p["patch"]["value"] for p in patches]
                # Inserted in this order before the router: body limit, buffer, then ext_proc (as
                # in the bootstrap).
                self.assertEqual([f["name"] for f in inserted], ["envoy.filters.http.body_size_limit",
                                                                  "envoy.filters.http.buffer", "envoy.filters.http.ext_proc"])
                ours = {f["name"]: f for f in inserted}
                boot = self.bootstrap_filters(mode)
                names = list(boot)
                self.assertLess(names.index("envoy.filters.http.body_size_limit"), names.index("envoy.filters.http.buffer"))
                self.assertLess(names.index("envoy.filters.http.buffer"), names.index("envoy.filters.http.ext_proc"))
                # Field by field: the same settings, the cluster that reaches serve aside.
                self.assertEqual(ours["envoy.filters.http.body_size_limit"], boot["envoy.filters.http.body_size_limit"])
                self.assertEqual(ours["envoy.filters.http.buffer"], boot["envoy.filters.http.buffer"])
                self.assertEqual(ours["envoy.filters.http.buffer"]["typed_config"]["max_request_bytes"], CONFIG["limits"]["max_request_body_bytes"])
                ext_proc = ours["envoy.filters.http.ext_proc"]["typed_config"]
                self.assertEqual(without_cluster(ext_proc), without_cluster(boot["envoy.filters.http.ext_proc"]["typed_config"]))
                self.assertIn({"exact": "x-llm-end-user"}, ext_proc["forward_rules"]["allowed_headers"]["patterns"])
                self.assertEqual("metadata_options" in ext_proc, ext_authz)
                # The cluster is the one Istio creates for the rendered serve Service.
                svc = one(objects, "Service", f"{RELEASE}-tollgate-serve")
                cluster = f"outbound|{svc['spec']['ports'][0]['port']}||{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
                self.assertEqual(ext_proc["grpc_service"]["envoy_grpc"]["cluster_name"], cluster)
                notes = text["tollgate/templates/NOTES.txt"]
                if not ext_authz:
                    # ext_proc checks keys itself: no ext_authz anywhere.
                    self.assertEqual(find(objects, "AuthorizationPolicy"), [])
                    self.assertNotIn("extensionProviders", notes)
                    self.assertNotIn("envoy.filters.http.ext_authz", boot)
                    envoy_validate(minimal_bootstrap(inserted, [cluster]), self.tmp, f"envoyfilter-{mode}.yaml")
                    continue
                # The ext_authz path: the mesh config's extension provider (from NOTES) is valid for
                # Istio's MeshConfig, and has the bootstrap's settings.
                snippet = yaml.safe_load(notes[notes.index("  extensionProviders:"):])
                errors = list(schemas().mesh.iter_errors(snippet))
                self.assertEqual(errors, [], [e.message for e in errors])
                provider = snippet["extensionProviders"][0]
                ap = one(objects, "AuthorizationPolicy")
                self.assertEqual(ap["spec"]["action"], "CUSTOM")
                self.assertEqual(ap["spec"]["provider"]["name"], provider["name"])
                self.assertEqual(ap["spec"]["selector"]["matchLabels"], values["workloadSelector"])
                if values.get("extAuthz", {}).get("paths"):
                    self.assertEqual(ap["spec"]["rules"], [{"to": [{"operation": {"paths": values["extAuthz"]["paths"]}}]}])
                grpc = provider["envoyExtAuthzGrpc"]
                self.assertEqual((grpc["service"], grpc["port"]), (f"{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local", svc["spec"]["ports"][0]["port"]))
                # What Istio builds from the provider (pilot's ext_authz builder: failOpen →
                # failure_mode_allow, statusOnError → status_on_error, timeout → the gRPC
                # service's), compared with the bootstrap's ext_authz.
                authz = boot["envoy.filters.http.ext_authz"]["typed_config"]
                self.assertEqual(grpc["failOpen"], authz["failure_mode_allow"])
                self.assertEqual(int(grpc["statusOnError"]), STATUS[authz["status_on_error"]["code"]])
                self.assertEqual(duration(grpc["timeout"]), duration(authz["grpc_service"]["timeout"]))
                istio_authz = {"name": "envoy.filters.http.ext_authz", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                    "transport_api_version": "V3",
                    "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": grpc["timeout"]},
                    "failure_mode_allow": grpc["failOpen"],
                    "status_on_error": {"code": {503: "ServiceUnavailable"}[int(grpc["statusOnError"])]}}}
                self.assertEqual(without_cluster(istio_authz["typed_config"]), without_cluster(authz))
                # Envoy itself accepts the fragments, in the order the mesh runs them.
                envoy_validate(minimal_bootstrap([istio_authz] + inserted, [cluster]), self.tmp, f"envoyfilter-{mode}.yaml")

    def test_envoy_gateway_policies_carry_the_bootstrap_settings(self):
        for mode in ("envoy-gateway", "envoy-gateway-ext-authz"):
            with self.subTest(mode=mode):
                self.check_envoy_gateway(mode)

    def check_envoy_gateway(self, mode):
        text, objects = self.rendered[mode]
        ext_authz = MODES[mode]["config"].get("envoy", {}).get("auth") == "ext_authz"
        values = MODES[mode]["envoyGateway"]
        eep = one(objects, "EnvoyExtensionPolicy")
        epp = one(objects, "EnvoyPatchPolicy")
        grant = one(objects, "ReferenceGrant")
        svc = one(objects, "Service", f"{RELEASE}-tollgate-serve")
        for policy in (eep, epp):
            self.assertEqual(policy["metadata"]["namespace"], values["namespace"])
        self.assertEqual(eep["spec"]["targetRefs"], TARGETS)
        backend = {"group": "", "kind": "Service", "name": svc["metadata"]["name"], "namespace": NAMESPACE,
                   "port": svc["spec"]["ports"][0]["port"]}
        ext_proc = eep["spec"]["extProc"][0]
        self.assertEqual(ext_proc["backendRefs"], [backend])
        self.assertEqual(grant["metadata"]["namespace"], NAMESPACE)
        self.assertEqual({f["kind"] for f in grant["spec"]["from"]}, {"EnvoyExtensionPolicy", "SecurityPolicy"})

        # The ExternalProcessor Envoy Gateway v1.9.0 builds from the policy
        # (internal/xds/translator/extproc.go: buildProcessingMode, extProcConfig) ...
        mode_ = ext_proc["processingMode"]
        body = {"Buffered": "BUFFERED", "Streamed": "STREAMED", "BufferedPartial": "BUFFERED_PARTIAL",
                "FullDuplexStreamed": "FULL_DUPLEX_STREAMED"}
        pm = {"request_header_mode": "SKIP", "response_header_mode": "SKIP", "request_body_mode": "NONE",
              "response_body_mode": "NONE", "request_trailer_mode": "SKIP", "response_trailer_mode": "SKIP"}
        for direction in ("request", "response"):
            if direction in mode_:
                pm[f"{direction}_header_mode"] = "SEND"
                if "body" in mode_[direction]:
                    pm[f"{direction}_body_mode"] = body[mode_[direction]["body"]]
                    if mode_[direction]["body"] == "FullDuplexStreamed":
                        pm[f"{direction}_trailer_mode"] = "SEND"
        eg = {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": "eg-extproc"}, "timeout": "10s"},
            "processing_mode": pm,
            "failure_mode_allow": ext_proc["failOpen"],
            "message_timeout": ext_proc["messageTimeout"],
            "allow_mode_override": mode_["allowModeOverride"],
            "status_on_error": {"code": {v: k for k, v in STATUS.items()}[ext_proc["statusOnError"]]},
        }
        if "metadata" in ext_proc:
            eg["metadata_options"] = {"forwarding_namespaces": {"untyped": ext_proc["metadata"]["accessibleNamespaces"]}}
        # ... then the EnvoyPatchPolicy's additions, on the filter Envoy Gateway names after the policy.
        filter_name = f"envoy.filters.http.ext_proc/envoyextensionpolicy/{values['namespace']}/{eep['metadata']['name']}/extproc/0"
        self.assertEqual(epp["spec"]["targetRef"], {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "eg"})
        for patch in epp["spec"]["jsonPatches"]:
            self.assertEqual(patch["name"], values["patchPolicy"]["listenerName"])
            op = patch["operation"]
            self.assertEqual(op["jsonPath"], f"..http_filters[?(@.name=='{filter_name}')].typed_config")
            self.assertEqual(op["op"], "add")
            target, key = eg, op["path"].strip("/").split("/")
            for k in key[:-1]:
                target = target[k]
            target[key[-1]] = op["value"]
        boot = self.bootstrap_filters(mode)
        self.assertEqual(without_cluster(eg), without_cluster(boot["envoy.filters.http.ext_proc"]["typed_config"]))
        filters = [{"name": "envoy.filters.http.ext_proc", "typed_config": eg}]
        clusters = ["eg-extproc"]

        if not ext_authz:
            self.assertEqual(find(objects, "SecurityPolicy"), [])
            self.assertNotIn("envoy.filters.http.ext_authz", boot)
        else:
            # The ext_authz filter Envoy Gateway builds from the SecurityPolicy (extauth.go).
            sp = one(objects, "SecurityPolicy")
            self.assertEqual(sp["metadata"]["namespace"], values["namespace"])
            self.assertEqual(sp["spec"]["targetRefs"], TARGETS)
            self.assertEqual(sp["spec"]["extAuth"]["grpc"]["backendRefs"], [backend])
            ea = sp["spec"]["extAuth"]
            eg_authz = {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": "eg-extauth"}, "timeout": ea["timeout"]},
                "failure_mode_allow": ea["failOpen"],
                "status_on_error": {"code": {v: k for k, v in STATUS.items()}[ea["statusOnError"]]},
            }
            self.assertEqual(without_cluster(eg_authz), without_cluster(boot["envoy.filters.http.ext_authz"]["typed_config"]))
            filters.insert(0, {"name": "envoy.filters.http.ext_authz", "typed_config": eg_authz})
            clusters.append("eg-extauth")
        envoy_validate(minimal_bootstrap(filters, clusters), self.tmp, f"{mode}.yaml")

    # -- the image -------------------------------------------------------------------------

    def test_images_match_the_repository(self):
        values = chart().values
        version = (REPO / "envoy" / "VERSION").read_text().strip()
        self.assertEqual(values["gateway"]["envoy"]["image"]["tag"], f"distroless-v{version}")
        cargo = (REPO / "Cargo.toml").read_text()
        workspace_version = re.search(r'\[workspace\.package\][^\[]*?version = "([^"]+)"', cargo).group(1)
        self.assertEqual(chart().metadata["appVersion"], workspace_version)
        # The image's user is the pods' user (the socket between Envoy and serve needs one UID).
        dockerfile = (REPO / "Dockerfile").read_text()
        user = re.findall(r"^USER\s+([0-9]+):([0-9]+)\s*$", dockerfile, re.M)
        self.assertEqual(user[-1], (str(values["podSecurityContext"]["runAsUser"]), str(values["podSecurityContext"]["runAsGroup"])))
        self.assertIn("cargo build --release --locked", dockerfile)


if __name__ == "__main__":
    started = time.time()
    result = unittest.main(exit=False, verbosity=2).result
    print(f"{result.testsRun} tests in {time.time() - started:.1f}s")
    if not result.wasSuccessful():
        sys.exit(1)
    print("all checks passed")
