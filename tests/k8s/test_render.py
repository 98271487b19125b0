"""Every overlay builds with ``kubectl kustomize`` and every object it makes is valid Kubernetes, checked offline
against the OpenAPI schemas of a pinned Kubernetes version and of the oldest one the docs promise (strict: an
unknown or misspelt field fails)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from tests.k8s.manifests import KUBERNETES_VERSION, OLDEST_KUBERNETES, OVERLAYS, named, render

CERT_MANAGER = "cert-manager.io/v1"  # a CRD: no schema in kubernetes-validate, checked by hand below


@pytest.mark.parametrize("version", [KUBERNETES_VERSION, OLDEST_KUBERNETES])
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_for_the_pinned_kubernetes(overlay: str, version: str) -> None:
    objects = render(overlay)
    assert objects, f"k8s/overlays/{overlay} renders nothing"
    problems = []
    for obj in objects:
        if obj["apiVersion"] == CERT_MANAGER:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {error.message} at {list(error.path)}")
    assert not problems, "\n".join(problems)


def test_the_validator_rejects_what_kubernetes_would() -> None:
    """The check above has teeth: a misspelt field and a wrong type both fail."""
    deployment = next(o for o in render("dev") if o["kind"] == "Deployment")
    misspelt: dict[str, Any] = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)
    wrong_type: dict[str, Any] = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSION, strict=True)


# prod's binding of Consul's auth method reviewer to system:auth-delegator; the Consul agents' priority class
CLUSTER_SCOPED = ("ClusterRoleBinding", "PriorityClass")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lives_in_the_meshlet_namespace(overlay: str) -> None:
    for obj in render(overlay):
        if obj["kind"] in CLUSTER_SCOPED:
            for subject in obj.get("subjects", []):
                assert subject.get("namespace") == "meshlet", f"{obj['metadata']['name']}: {subject}"
        elif obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == "meshlet"
        else:
            assert obj["metadata"].get("namespace") == "meshlet", f"{obj['kind']}/{obj['metadata']['name']}"


def test_cert_manager_certificates_carry_each_services_spiffe_id() -> None:
    objects = render("cert-manager")
    certificates = {name: cert for name, cert in named(objects, "Certificate").items() if not cert["spec"].get("isCA")}
    assert set(certificates) == {"gateway", "orders", "inventory", "payments", "edge"}
    issuers = named(objects, "Issuer")
    for service, cert in certificates.items():
        spec = cert["spec"]
        assert spec["uris"] == [f"spiffe://meshlet.local/ns/default/dc/dc1/svc/{service}"]
        assert spec["dnsNames"] == [f"{service}.svc.default.ns.dc1.dc.meshlet.local"]
        assert {"server auth", "client auth"} <= set(spec["usages"])
        assert spec["issuerRef"]["name"] in issuers
        assert spec["secretName"] == f"{service}-tls"
    ca = named(objects, "Certificate")["meshlet-ca"]["spec"]
    assert issuers["meshlet-ca"]["spec"]["ca"]["secretName"] == ca["secretName"]
    assert issuers[ca["issuerRef"]["name"]]["spec"] == {"selfSigned": {}}
