"""Pure exporters of the spec: the CRD openAPIV3Schema, status models, install manifests, JSON Schema."""
