"""The driver of one run: job phases, Ray start-up, progress events to the console, MLflow and the Kubernetes status."""
