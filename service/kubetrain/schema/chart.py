"""The Helm chart's values.schema.json: so `helm install --set` typos and wrong types fail before anything installs.

The `platform` block is the operator's PlatformConfig model (passed in, so this module stays in the schema
layer); the rest describes the chart's own values (charts/kubetrain/values.yaml).
"""

from __future__ import annotations

from typing import Any

STRING = {"type": "string"}
BOOL = {"type": "boolean"}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
NAMES = {"type": "array", "items": {"type": "string", "minLength": 1}}
QUANTITY = {"type": ["string", "integer", "number"]}
RESOURCES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "requests": {"type": "object", "additionalProperties": QUANTITY},
        "limits": {"type": "object", "additionalProperties": QUANTITY},
    },
}
PULL_POLICY = {"enum": ["Always", "IfNotPresent", "Never"]}


def strict(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """An object that accepts these properties and no others."""
    out = {"type": "object", "additionalProperties": False, "properties": properties, **extra}
    if required:
        out["required"] = required
    return out


def image(pull_policy: bool = True) -> dict[str, Any]:
    props = {"repository": {"type": "string", "minLength": 1}, "tag": STRING}
    return strict({**props, "pullPolicy": PULL_POLICY} if pull_policy else props)


def values_schema(platform: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of the chart's values; `platform` is PlatformConfig.model_json_schema()."""
    platform = dict(platform)
    defs = platform.pop("$defs", {})
    database = {"host": STRING, "port": PORT, "database": STRING, "user": STRING,
                "passwordSecret": strict({"name": STRING, "key": STRING})}  # fmt: skip
    mlflow = strict(
        {
            "enabled": BOOL,
            "port": PORT,
            "workers": {"type": "integer", "minimum": 1},
            "browserUrl": {"type": "string", "pattern": "^(https?://.+)?$"},
            "allowedHosts": NAMES,
            "resources": RESOURCES,
            "artifacts": strict(
                {
                    "type": {"enum": ["pvc", "s3"]},
                    "pvc": strict({"size": QUANTITY, "storageClass": STRING}),
                    "s3": strict(
                        {
                            "destination": {"type": "string", "pattern": "^(s3://.+)?$"},
                            "endpointUrl": STRING,
                            "credentialsSecret": strict(
                                {"name": STRING, "accessKeyIdKey": STRING, "secretAccessKeyKey": STRING}
                            ),
                        }
                    ),
                }
            ),
            "postgresql": strict(
                {
                    "enabled": BOOL,
                    "database": {"type": "string", "minLength": 1},
                    "user": {"type": "string", "minLength": 1},
                    "existingSecret": STRING,
                    "secretKey": {"type": "string", "minLength": 1},
                    "persistence": strict({"size": QUANTITY, "storageClass": STRING}),
                    "resources": RESOURCES,
                }
            ),
            "externalDatabase": strict(database),
        }
    )
    schema = strict(
        {
            "images": strict(
                {
                    "control": image(),
                    "runtime": image(pull_policy=False),
                    "mlflow": image(),
                    "postgresql": image(),
                }
            ),
            "imagePullSecrets": NAMES,
            "operator": strict(
                {
                    "watchNamespaces": NAMES,
                    "metricsPort": PORT,
                    "healthPort": PORT,
                    "resources": RESOURCES,
                }
            ),
            "jobNamespaces": NAMES,
            "api": strict(
                {
                    "enabled": BOOL,
                    "replicas": {"type": "integer", "minimum": 1},
                    "port": PORT,
                    "service": strict(
                        {"type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]}, "port": PORT}
                    ),
                    "resources": RESOURCES,
                }
            ),
            "storage": {"type": "string", "pattern": "^((s3|pvc)://.+)?$"},
            "kueue": strict(
                {
                    "enabled": BOOL,
                    "localQueues": {
                        "type": "array",
                        "items": strict(
                            {"namespace": STRING, "name": STRING, "clusterQueue": STRING},
                            required=["namespace", "name", "clusterQueue"],
                        ),
                    },
                }
            ),
            "serviceMonitor": strict(
                {
                    "enabled": BOOL,
                    "interval": STRING,
                    "labels": {"type": "object", "additionalProperties": STRING},
                }
            ),
            "mlflow": mlflow,
            "platform": platform,
            # Helm passes the parent chart's globals to every chart
            "global": {"type": "object"},
        },
        title="kubetrain chart values",
    )
    return {"$schema": "http://json-schema.org/draft-07/schema#", **schema, "$defs": defs}
