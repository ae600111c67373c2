"""What the sections of ``traind.toml`` share: their base model, and their fields taken from
the trainer's config dataclasses where a section is one of them.

Such a section (``[train]``, ``[gold]``, ``[export]``) is defined once, by the dataclass
the trainer receives (``trainer.config``): its fields' names, order, types, defaults and
docstrings. The settings add only what is validated at the edge: the bounds.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import textwrap
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model


class Section(BaseModel):
    """A ``[section]`` of ``traind.toml``: frozen, and no key it does not know."""

    # forbid: a typo in traind.toml must fail loudly, not silently keep the default.
    # validate_default: defaults go through the same path resolution as given values.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def section_of(
    config: type, *, limits: dict[str, dict[str, Any]], keys: dict[str, str] | None = None
) -> type[Section]:
    """The fields of a section that is one of the trainer's config dataclasses, taken from
    it: each field's name, order, type, default and description (its docstring), so they
    cannot drift apart. ``limits`` add the bounds validated here, by field name (the
    dataclass's own checks and those the trainer assumes): ``Field`` keyword arguments.
    ``keys`` spell a field's TOML key differently where its name cannot be one (``from``
    is a Python keyword): field name -> key."""
    unknown = set(limits) - {f.name for f in dataclasses.fields(config)}
    if unknown:
        raise ValueError(f"limits for fields {config.__name__} does not have: {sorted(unknown)}")
    hints = typing.get_type_hints(config)
    docs = field_docs(config)
    fields: dict[str, Any] = {}
    for spec in dataclasses.fields(config):
        if spec.default is dataclasses.MISSING:
            default: dict[str, Any] = {"default_factory": spec.default_factory}
        else:
            default = {"default": spec.default}
        description = docs.get(spec.name)
        if not description:
            raise ValueError(f"{config.__name__}.{spec.name} has no docstring to describe it")
        key = (keys or {}).get(spec.name)
        aliases = {"alias": key} if key else {}
        info = Field(**default, description=description, **aliases, **limits.get(spec.name, {}))
        fields[spec.name] = (hints[spec.name], info)
    return create_model(f"{config.__name__}Fields", __base__=Section, **fields)


def field_docs(config: type) -> dict[str, str]:
    """The docstring under each annotated field of a class, as plain text: the comment
    ``traind init`` writes above the key (reStructuredText ````literals```` unquoted)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(config)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            text = " ".join(inspect.cleandoc(after.value.value).split())
            docs[node.target.id] = text.replace("``", "")
    return docs
