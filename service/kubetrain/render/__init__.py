"""Pure rendering: a TrainingJob (+ platform config) becomes the KubeRay objects that run it."""

from .platform import PlatformConfig, SecretRef
from .rayjob import configmap_name, rayjob_name, render, render_configmap, render_rayjob, resolved_spec

__all__ = [
    "PlatformConfig",
    "SecretRef",
    "configmap_name",
    "rayjob_name",
    "render",
    "render_configmap",
    "render_rayjob",
    "resolved_spec",
]
