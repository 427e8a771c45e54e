"""kubetrain: one TrainingJob spec, run locally on Ray or in Kubernetes through KubeRay."""

__version__ = "0.1.0"

GROUP = "kubetrain.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TrainingJob"
