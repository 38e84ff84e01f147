"""The base of every scenario section: frozen, unknown keys forbidden, docstrings kept for the docs."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PositiveFloat,
)
from pydantic_core import PydanticCustomError, core_schema


def _refuse_bool(kind: str) -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, bool):
            if kind == "int":
                raise PydanticCustomError("int_type", "Input should be a valid integer")
            raise PydanticCustomError("float_type", "Input should be a valid number")
        return value

    return check


def _no_bool_numbers(schema: Any) -> Any:
    """``schema`` with every int and float schema refusing booleans (pydantic's lax mode takes them)."""
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("int", "float") and "function" not in schema:
            return core_schema.no_info_before_validator_function(_refuse_bool(kind), schema)
        return {key: _no_bool_numbers(value) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_no_bool_numbers(item) for item in schema]
    return schema


class Section(BaseModel):
    """A scenario section. Frozen so that code below the parser can trust it never changes.

    Numbers are checked strictly where a lax reading would change what runs: ``true`` is not the
    integer 1 nor the number 1.0, and no number is NaN or infinite (a field that means something
    at infinity opts in with ``Field(allow_inf_nan=True)``).
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        validate_default=True,
        allow_inf_nan=False,
    )

    json_shorthands: ClassVar[dict[str, str | dict[str, Any]]] = {}
    """Short forms a field accepts besides its schema (a ``mode="before"`` validator turns them
    into the full form), so that the JSON schema (``fedsim schema``, editors) accepts them too:
    a tag key (``"kind"``: the field is a tagged union and ``graph: ring`` is short for
    ``graph: {kind: ring}``), or the JSON schema of the short form itself."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> Any:
        return _no_bool_numbers(handler(source))

    @classmethod
    def __get_pydantic_json_schema__(cls, core: Any, handler: GetJsonSchemaHandler) -> Any:
        schema = handler(core)
        if cls.json_shorthands:
            target = handler.resolve_ref_schema(schema)
            for name, short in cls.json_shorthands.items():
                field = cls.model_fields[name]
                prop = target["properties"][field.alias or name]
                target["properties"][field.alias or name] = with_shorthand(prop, short)
        return schema


_KEPT = ("title", "description", "default")


def with_shorthand(prop: dict[str, Any], short: str | dict[str, Any]) -> dict[str, Any]:
    """The JSON schema ``prop`` of a field, also accepting the short form ``short`` (see
    :attr:`Section.json_shorthands`)."""
    if isinstance(short, str):  # the tag names of a tagged union
        names = sorted(prop.get("discriminator", {}).get("mapping", {}))
        if not names:
            raise TypeError(f"a {short!r} shorthand needs a tagged union, got {prop}")
        short = {"type": "string", "enum": names}
    kept = {key: prop[key] for key in _KEPT if key in prop}
    full = {key: value for key, value in prop.items() if key not in _KEPT}
    alternatives = full["anyOf"] if list(full) == ["anyOf"] else [full]
    return {**kept, "anyOf": [short, *alternatives]}


MIN_PERIOD_S = 1e-6
"""Shortest duration a timing key may give (a microsecond): a shorter job, period or evaluation
interval makes the simulated clock crawl (or stall, once it no longer changes a float) while the
run never ends."""


def _resolvable(value: float) -> float:
    if value < MIN_PERIOD_S:
        raise ValueError(
            f"must be >= {MIN_PERIOD_S:g} s (shorter times stall the simulated clock), "
            f"got {value:g}"
        )
    return value


Period = Annotated[PositiveFloat, AfterValidator(_resolvable)]
"""A positive duration in seconds, at least :data:`MIN_PERIOD_S`."""


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

    def __get_pydantic_json_schema__(self, core: Any, handler: GetJsonSchemaHandler) -> Any:
        # An untagged section matches the default member and maybe others (their tags have
        # defaults too): "any of" the members, not "exactly one".
        schema = handler(core)
        if "oneOf" in schema:
            schema = {("anyOf" if key == "oneOf" else key): value for key, value in schema.items()}
        return schema


def betas_in_range(betas: tuple[float, float]) -> tuple[float, float]:
    """Adam-style moment decays (β1, β2) must each be in [0, 1): the local optimiser's and the
    server optimiser's share this rule."""
    if not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"each of betas must be in [0, 1), got {list(betas)}")
    return betas
