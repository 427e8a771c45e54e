"""The strict pydantic base every spec model shares: unknown fields are errors, every field documented."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator

RFC1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class Spec(BaseModel):
    """Base of all spec models: forbid unknown fields, validate defaults and assignments."""

    model_config = ConfigDict(
        extra="forbid",
        validate_default=True,
        validate_assignment=True,
        use_enum_values=True,
        populate_by_name=True,
    )


def _check_label(value: str) -> str:
    if len(value) > 63 or not RFC1123_LABEL.match(value):
        raise ValueError(
            "must be an RFC 1123 label: at most 63 characters, lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return value


Rfc1123Label = Annotated[str, AfterValidator(_check_label)]


def type_discriminator(default: str) -> Discriminator:
    """Discriminate a union on its `type` key, taking `default` when the key is left out."""

    def pick(value):
        if isinstance(value, dict):
            return value.get("type", default)
        return getattr(value, "type", default)

    return Discriminator(pick)
