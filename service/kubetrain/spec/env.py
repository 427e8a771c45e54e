"""Environment variables for the runtime; anything secret is a reference, never a value."""

from __future__ import annotations

import re

from pydantic import Field, model_validator

from .base import Spec

SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)", re.I)
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class SecretKeyRef(Spec):
    """A key in a Kubernetes Secret of the job's namespace."""

    name: str = Field(..., min_length=1, description="Secret name.")
    key: str = Field(..., min_length=1, description="Key inside the Secret.")


class EnvVar(Spec):
    """One variable: a plain value, or a secret_key_ref (locally read from the same-named process variable)."""

    name: str = Field(..., pattern=ENV_NAME, description="Variable name.")
    value: str | None = Field(None, description="Plain, non-secret value.")
    secret_key_ref: SecretKeyRef | None = Field(None, description="Take the value from a Kubernetes Secret.")

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if (self.value is None) == (self.secret_key_ref is None):
            raise ValueError("set exactly one of value and secret_key_ref")
        if self.value is not None and SECRET_NAME.search(self.name):
            raise ValueError(
                f"'{self.name}' looks like a secret: reference it with secret_key_ref "
                "{name, key} instead of writing its value into the spec"
            )
        return self
