"""The TrainingJob spec: pydantic models, the single source of truth (no I/O, no heavy imports)."""

from .job import EvaluationSpec, GenerationEval, ObjectMeta, TrainingJob, TrainingJobSpec
from .load import Problem, SpecError, apply_overrides, load_job, parse_yaml, set_path, validate_job

__all__ = [
    "EvaluationSpec",
    "GenerationEval",
    "ObjectMeta",
    "Problem",
    "SpecError",
    "TrainingJob",
    "TrainingJobSpec",
    "apply_overrides",
    "load_job",
    "parse_yaml",
    "set_path",
    "validate_job",
]
