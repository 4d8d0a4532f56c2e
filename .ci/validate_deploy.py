"""Schema checks of the deployment files; called by .ci/validate-deploy."""

import copy
import glob
import json
import sys

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.30.0"
# Custom resources have no schema in the Kubernetes set: check their envelope only.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}
NOT_RESOURCES = {"kustomization.yaml"}


def kubernetes_errors(document, where):
    kind = (document.get("apiVersion"), document.get("kind"))
    if kind in CUSTOM_KINDS:
        missing = [key for key in ("metadata", "spec") if not isinstance(document.get(key), dict)]
        if missing or not document["metadata"].get("name"):
            return [f"{where}: {kind[1]} lacks {missing or ['metadata.name']}"]
        return []
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{where}: {error.message} at {'/'.join(str(p) for p in error.path)}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [f"{where}: no schema for {error}"]
    return []


def manifest_errors(files):
    errors = []
    for path in files:
        with open(path) as handle:
            for index, document in enumerate(yaml.safe_load_all(handle)):
                if document is not None:
                    errors += kubernetes_errors(document, f"{path}#{index}")
    return errors


def compose_errors(document, schema):
    validator = jsonschema.Draft7Validator(schema)
    return [f"docker-compose.yml: {error.message} at {'/'.join(str(p) for p in error.path)}"
            for error in validator.iter_errors(document)]


def main():
    with open(sys.argv[1]) as handle:
        compose_schema = json.load(handle)
    manifests = sorted(path for path in glob.glob("k8s/*.yaml")
                       if path.split("/")[-1] not in NOT_RESOURCES)
    with open("docker-compose.yml") as handle:
        compose = yaml.safe_load(handle)

    errors = manifest_errors(manifests) + compose_errors(compose, compose_schema)
    for error in errors:
        print(f"invalid: {error}")
    checked = sum(1 for path in manifests for doc in yaml.safe_load_all(open(path)) if doc)
    print(f"checked {checked} Kubernetes resources in {len(manifests)} files and docker-compose.yml")

    # The check must be able to fail: a deployment with a wrong type and a typo'd field, and a
    # compose file with an unknown service key, must both be refused.
    with open("k8s/api.yaml") as handle:
        deployment = next(doc for doc in yaml.safe_load_all(handle) if doc and doc["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["replicas"] = "two"
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    if not kubernetes_errors(broken, "broken deployment"):
        print("self-check failed: a broken Deployment passed")
        return 1
    broken_compose = copy.deepcopy(compose)
    broken_compose["services"]["api"]["portz"] = ["8000:8000"]
    if not compose_errors(broken_compose, compose_schema):
        print("self-check failed: a broken compose file passed")
        return 1
    print("self-check: broken copies are refused")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
