"""The base of every scenario section: frozen, unknown keys forbidden, docstrings kept for the docs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A scenario section. Frozen so that code below the parser can trust it never changes."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, validate_default=True
    )


class DefaultTag:
    """Marks a tagged union whose tag key may be omitted: ``{mean_s: 3}`` means the default member.

    Used as ``Annotated[A | B, Field(discriminator=key), DefaultTag(key, "a")]``; it fills the tag
    in before the union is validated (so ``--set clients.compute.mean_s=3`` works on a file that
    never named ``dist``), and tells error messages which member an untagged section is.
    """

    def __init__(self, key: str, default: str) -> None:
        self.key = key
        self.default = default

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        def fill(value: Any) -> Any:
            if isinstance(value, dict) and self.key not in value:
                return {self.key: self.default, **value}
            return value

        return core_schema.no_info_before_validator_function(fill, handler(source))
