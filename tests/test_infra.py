"""Deployment manifests parse and agree with the pipeline: versions, GPU counts, environment."""

from importlib import metadata
from pathlib import Path

import ray
import yaml

from llada_recipe.config import load_recipe

INFRA = Path(__file__).resolve().parent.parent / "infra"


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((INFRA / name).read_text()) if d]


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def check_ray_cluster_spec(spec: dict, world_size: int | None = None) -> None:
    assert spec["rayVersion"] == ray.__version__  # the pinned Ray
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"  # drivers and node tasks reserve no GPU
    gpus = 0
    for group in spec["workerGroupSpecs"]:
        per_node = int(group["rayStartParams"]["num-gpus"])
        for c in containers(group["template"]):
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == per_node
        gpus += per_node * group["replicas"]
    if world_size is not None:
        assert gpus == world_size
    for template in [head["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]:
        for c in containers(template):
            refs = {next(iter(e.values()))["name"] for e in c["envFrom"]}
            assert refs == {"llada-s3", "llada-env"}  # credentials from a Secret, never inline
            volumes = {v["name"]: v for v in template["spec"]["volumes"]}
            assert {m["name"] for m in c["volumeMounts"]} <= set(volumes)  # every mount is defined
            assert all("emptyDir" in v for v in volumes.values())  # node-local scratch only: S3 is the shared medium
            assert "/scratch" in {m["mountPath"] for m in c["volumeMounts"]}


def test_kuberay_manifests():
    cluster, config = docs("kuberay/raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    check_ray_cluster_spec(cluster["spec"])
    assert config["kind"] == "ConfigMap" and {"MLFLOW_TRACKING_URI", "LLADA_STORE"} <= set(config["data"])
    assert config["data"]["LLADA_CACHE_DIR"].startswith("/scratch/")
    assert not any("SECRET" in k or "PASSWORD" in k for k in config["data"])
    (job,) = docs("kuberay/rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    words = job["spec"]["entrypoint"].split()
    assert words[:2] == ["llada", "run"]
    recipe = load_recipe(words[2])
    check_ray_cluster_spec(job["spec"]["rayClusterSpec"], world_size=recipe.parallel.world_size)


def test_gpu_recipes_keep_nothing_on_a_shared_filesystem():
    for name in ("llada2-mini", "llada2-flash"):
        recipe = load_recipe(name)
        assert all(str(uri).startswith("s3://") for uri in (recipe.store, recipe.artifact_root,
                                                             recipe.base.hf_checkpoint, recipe.data.input))
        assert recipe.needs_cluster and not recipe.tracking_uri.startswith(("sqlite:", "file:"))


def test_cluster_launcher():
    (cfg,) = docs("ray/cluster-launcher.yaml")
    gpu = cfg["available_node_types"]["gpu_h100"]
    assert gpu["resources"]["GPU"] * gpu["min_workers"] == load_recipe("llada2-mini").parallel.world_size
    assert cfg["available_node_types"][cfg["head_node_type"]]["resources"]["GPU"] == 0
    assert any("torch==2.13.0" in c for c in cfg["setup_commands"])
    assert any("--num-gpus=0" in c for c in cfg["head_start_ray_commands"])


def test_mlflow_deployments():
    (compose,) = docs("mlflow/docker-compose.yaml")
    server = compose["services"]["mlflow"]
    assert server["image"].endswith("v" + metadata.version("mlflow"))
    assert "--backend-store-uri postgresql://" in server["command"]
    assert "--artifacts-destination s3://" in server["command"]
    assert "postgres" in server["depends_on"]
    (values,) = docs("mlflow/helm-values.yaml")
    assert values["image"]["tag"] == "v" + metadata.version("mlflow")
    assert values["backendStore"]["postgres"]["enabled"] and values["artifactRoot"]["s3"]["enabled"]
    assert "existingSecret" in values["artifactRoot"]["s3"]
