"""The base of every scenario section: frozen, unknown keys forbidden, docstrings kept for the docs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A scenario section. Frozen so that code below the parser can trust it never changes."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, validate_default=True
    )
