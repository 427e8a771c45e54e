"""The REST API (FastAPI): TrainingJobs at Kubernetes-style paths, callers checked by TokenReview + SubjectAccessReview."""
