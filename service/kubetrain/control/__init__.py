"""The operator: decide/status are pure, kube.py is the one API client, handlers.py is the kopf glue."""
