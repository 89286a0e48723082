#!/usr/bin/env python3
"""Regenerates the schemas in this directory from their upstream sources (see README.md).

Kubernetes: the `*-local-strict` JSON schemas shipped in the `kubernetes-validate` wheel, one
self-contained file per kind and Kubernetes version (only the definitions the kind reaches).
CRDs: the `openAPIV3Schema` of each served version, as the CRD file defines it. Descriptions are
dropped everywhere (they are most of the bytes and no validation reads them); nothing else
changes. Usage:

    pip download --no-deps kubernetes-validate==1.37.0 && unzip kubernetes_validate-*.whl -d kv
    python3 vendor.py --kubernetes-validate kv/kubernetes_validate \\
        --crds istio.yaml eg_envoyextensionpolicies.yaml ... servicemonitors.yaml
"""

import argparse
import json
import pathlib
import re

import yaml

HERE = pathlib.Path(__file__).resolve().parent

# The Kubernetes kinds the chart renders, by the file name kubernetes-validate gives them.
KINDS = [
    "configmap-v1",
    "service-v1",
    "serviceaccount-v1",
    "persistentvolumeclaim-v1",
    "deployment-apps-v1",
    "horizontalpodautoscaler-autoscaling-v2",
    "poddisruptionbudget-policy-v1",
    "networkpolicy-networking-v1",
]
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schema set.
VERSIONS = ["1.30.0", "1.37.0"]
# The custom resources the chart renders: (group, kind, version).
CRDS = [
    ("networking.istio.io", "EnvoyFilter", "v1alpha3"),
    ("security.istio.io", "AuthorizationPolicy", "v1"),
    ("gateway.envoyproxy.io", "EnvoyExtensionPolicy", "v1alpha1"),
    ("gateway.envoyproxy.io", "SecurityPolicy", "v1alpha1"),
    ("gateway.envoyproxy.io", "EnvoyPatchPolicy", "v1alpha1"),
    ("gateway.networking.k8s.io", "ReferenceGrant", "v1beta1"),
    ("monitoring.coreos.com", "ServiceMonitor", "v1"),
]


def strip(node):
    """`node` without `description` keys (but keeping properties that are named so)."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "description" and isinstance(v, str):
                continue
            if k == "properties" and isinstance(v, dict):
                out[k] = {pk: strip(pv) for pk, pv in v.items()}
            else:
                out[k] = strip(v)
        return out
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


REF = re.compile(r"^(?:/api/_definitions\.json|https://kubernetes\.io/api/_definitions\.json|_definitions\.json)?#/\$defs/(.+)$")


def local_refs(node, found):
    """Rewrites every definition `$ref` of `node` to `#/$defs/…`, collecting the names."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                m = REF.match(v)
                if not m:
                    raise SystemExit(f"unexpected $ref {v}")
                found.add(m.group(1))
                out[k] = f"#/$defs/{m.group(1)}"
            else:
                out[k] = local_refs(v, found)
        return out
    if isinstance(node, list):
        return [local_refs(v, found) for v in node]
    return node


def kubernetes(kv: pathlib.Path):
    for version in VERSIONS:
        src = kv / "kubernetes-json-schema" / f"v{version}-local-strict"
        defs = json.loads((src / "_definitions.json").read_text())["$defs"]
        dst = HERE / "kubernetes" / f"v{version}"
        dst.mkdir(parents=True, exist_ok=True)
        for kind in KINDS:
            schema = json.loads((src / f"{kind}.json").read_text())
            wanted, done, closure = set(), set(), {}
            schema = local_refs(schema, wanted)
            while wanted - done:
                name = sorted(wanted - done)[0]
                done.add(name)
                closure[name] = local_refs(defs[name], wanted)
            schema.pop("$id", None)
            schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
            schema["$defs"] = closure
            (dst / f"{kind}.json").write_text(json.dumps(strip(schema), sort_keys=True, separators=(",", ":")) + "\n")


def crds(files):
    docs = []
    for f in files:
        docs += [d for d in yaml.safe_load_all(pathlib.Path(f).read_text()) if d and d.get("kind") == "CustomResourceDefinition"]
    dst = HERE / "crds"
    dst.mkdir(parents=True, exist_ok=True)
    for group, kind, version in CRDS:
        crd = next(d for d in docs if d["spec"]["group"] == group and d["spec"]["names"]["kind"] == kind)
        ver = next(v for v in crd["spec"]["versions"] if v["name"] == version)
        out = {
            "group": group,
            "kind": kind,
            "version": version,
            "annotations": {k: v for k, v in (crd["metadata"].get("annotations") or {}).items() if "version" in k},
            "openAPIV3Schema": strip(ver["schema"]["openAPIV3Schema"]),
        }
        name = f"{group}_{kind.lower()}_{version}.json"
        (dst / name).write_text(json.dumps(out, sort_keys=True, separators=(",", ":")) + "\n")


PROTO_TYPES = {
    "string": {"type": "string"},
    "bool": {"type": "boolean"},
    "uint32": {"type": "integer", "minimum": 0},
    "int32": {"type": "integer"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?s$"},
}


def block_end(text, start):
    """The index just past the `}` closing the block whose body starts at `start`."""
    depth, end = 1, start
    while depth:
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        end += 1
    return end


def proto_message(text, name):
    """The fields of message `name` in `text` (a .proto file), not those of the messages and
    enums nested in it: [(type, json_name)]."""
    text = re.sub(r"//[^\n]*", "", text)
    start = re.search(r"message " + name + r" \{", text).end()
    body = text[start:block_end(text, start) - 1]
    while True:
        nested = re.search(r"\b(message|enum) [A-Za-z0-9_]+ \{", body)
        if not nested:
            break
        body = body[:nested.start()] + body[block_end(body, nested.end()):]
    fields = []
    for ftype, fname in re.findall(r"^\s*([A-Za-z_.0-9]+)\s+([a-z_0-9]+)\s*=\s*[0-9]+", body, re.M):
        if ftype in ("message", "enum", "oneof", "reserved"):
            continue
        camel = re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), fname)
        fields.append((ftype, camel))
    return fields


def istio_mesh(proto):
    """The mesh config's `extensionProviders` entries of kind envoyExtAuthzGrpc, from Istio's
    mesh/v1alpha1/config.proto (MeshConfig is not a CRD, so no OpenAPI schema ships for it)."""
    text = pathlib.Path(proto).read_text()
    grpc = {}
    for ftype, name in proto_message(text, "EnvoyExternalAuthorizationGrpcProvider"):
        grpc[name] = PROTO_TYPES.get(ftype, {"type": "object"})
    providers = {name: {"type": "object"} for _, name in proto_message(text, "ExtensionProvider")}
    providers["name"] = {"type": "string", "minLength": 1}
    providers["envoyExtAuthzGrpc"] = {"type": "object", "properties": grpc, "additionalProperties": False, "required": ["service"]}
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"extensionProviders": {"type": "array", "items": {
            "type": "object", "properties": providers, "additionalProperties": False, "required": ["name"],
        }}},
        "additionalProperties": False,
    }
    dst = HERE / "istio"
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "meshconfig-extensionproviders.json").write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kubernetes-validate", type=pathlib.Path, help="the unpacked kubernetes_validate package")
    p.add_argument("--crds", nargs="*", default=[], help="CRD YAML files")
    p.add_argument("--istio-mesh-proto", help="istio/api mesh/v1alpha1/config.proto")
    a = p.parse_args()
    if a.kubernetes_validate:
        kubernetes(a.kubernetes_validate)
    if a.crds:
        crds(a.crds)
    if a.istio_mesh_proto:
        istio_mesh(a.istio_mesh_proto)


if __name__ == "__main__":
    main()
