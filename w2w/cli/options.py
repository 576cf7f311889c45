"""Command-line options derived from the stage configs: declared once, in the config.

Every field of a stage's config becomes an option (``--batch-size``), with the field's
description as help and its default shown; booleans get ``--x/--no-x``; fields of nested
sections become ``--section-field`` options grouped under the section's name; fields a
stage takes positionally become arguments. An option that is not given leaves the value
from ``--config FILE.yaml`` (or the config's default) alone: options win over the file.
Lists and mappings are given as text, in the compact form the config accepts (``--classes
1=forest,2=water``) or as YAML (``--model-options '{encoder_depth: 3}'``).
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import typer
import yaml
from pydantic import BeforeValidator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from w2w.cli.help import HelpAllOpt
from w2w.core.config import StageConfig, load_yaml
from w2w.core.errors import ConfigError
from w2w.stages import Stage

SCALARS = (bool, int, float, str)


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """``(X, metadata)`` for ``X``, ``X | None`` and ``Annotated[X, ...]`` (in any nesting)."""
    metadata: list[Any] = []
    while True:
        if get_origin(annotation) is Annotated:
            annotation, *extra = get_args(annotation)
            metadata.extend(extra)
        elif get_origin(annotation) in (typing.Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation, metadata
            annotation = args[0]
        else:
            return annotation, metadata


def _optional_inner(annotation: Any) -> Any:
    """``X`` for ``X | None``, ``Annotated[X, ...]`` and the like."""
    return _unwrap(annotation)[0]


def _is_section(annotation: Any) -> bool:
    inner = _optional_inner(annotation)
    return isinstance(inner, type) and issubclass(inner, StageConfig)


def _cli_type(field: FieldInfo) -> tuple[Any, Callable[[Any], Any] | None]:
    """The type typer parses an option as, and how to turn the text into a config value
    (``None``: as parsed)."""
    inner, metadata = _unwrap(field.annotation)
    metadata += list(field.metadata)
    if inner in SCALARS:
        return inner, None
    if get_origin(inner) is Literal:
        values = get_args(inner)
        if all(isinstance(v, str) for v in values):
            return inner, None
        if all(isinstance(v, int) for v in values):
            return int, None
    if any(isinstance(m, BeforeValidator) for m in metadata):
        return str, None  # the config parses its own compact form
    if get_origin(inner) is tuple:
        return str, _parse_sequence
    return str, _parse_yaml


def _parse_sequence(text: str) -> Any:
    """A tuple setting, as YAML (``[300000, 3500000]``) or as comma-separated values
    (``300000,3500000``), as other list options take them."""
    stripped = text.strip()
    if "," in stripped and not stripped.startswith(("[", "(")):
        stripped = f"[{stripped}]"
    return _parse_yaml(stripped)


def _parse_yaml(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"'{text}' is not a value w2w can read ({exc}); use YAML") from None


def _default_text(field: FieldInfo) -> str | bool:
    if field.is_required():
        return False
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if value is PydanticUndefined:
        return False
    if value is None:
        return "none"
    if isinstance(value, dict | list | tuple) and not value:
        return "none"
    return str(value)


class Param:
    """One command-line parameter and the config field it sets (a dotted path)."""

    def __init__(self, name: str, target: str, parameter: inspect.Parameter, convert: Any):
        self.name, self.target, self.parameter, self.convert = name, target, parameter, convert


def _param(
    name: str,
    target: str,
    field: FieldInfo,
    *,
    argument: bool = False,
    decls: tuple[str, ...] = (),
    panel: str | None = None,
) -> Param:
    """The typer parameter for ``field``, set on the command line as ``name``."""
    kind, convert = _cli_type(field)
    help_text = (field.description or name.replace("_", " ")).rstrip(".")
    if field.is_required():
        help_text += " (required, here or in --config)"
    if argument:
        if get_origin(_optional_inner(field.annotation)) is list:
            kind, convert = list[str], None  # several arguments, each a value
        annotation: Any = kind
        info: Any = typer.Argument(help=help_text, show_default=False)
    else:
        annotation = kind
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            flag = f"{flag}/--no-{name.replace('_', '-')}"
        info = typer.Option(
            flag, *decls, help=help_text, show_default=_default_text(field), rich_help_panel=panel
        )
    parameter = inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[annotation | None, info],
    )
    return Param(name, target, parameter, convert)


def stage_params(stage: Stage) -> list[Param]:
    """Every command-line parameter of a stage, from its config (see the module notes)."""
    cls = stage.config
    params: list[Param] = []
    fields = cls.model_fields
    for name in stage.arguments:
        params.append(_param(name, name, fields[name], argument=True))
    for name, field in fields.items():
        if name in stage.arguments:
            continue
        if _is_section(field.annotation):
            section = _optional_inner(field.annotation)
            for sub, sub_field in section.model_fields.items():
                if not _is_section(sub_field.annotation):
                    params.append(
                        _param(f"{name}_{sub}", f"{name}.{sub}", sub_field, panel=f"{name} options")
                    )
            continue
        short = (stage.short[name],) if name in stage.short else ()
        params.append(_param(name, name, field, decls=short))
    for alias, target in stage.aliases.items():
        params.append(_param(alias, target, _field_at(cls, target), panel="Shortcuts"))
    names = [p.name for p in params]
    repeated = {n for n in names if names.count(n) > 1}
    if repeated:
        raise TypeError(f"stage {stage.name}: option names {sorted(repeated)} are declared twice")
    return params


def _field_at(cls: type[StageConfig], path: str) -> FieldInfo:
    head, _, rest = path.partition(".")
    field = cls.model_fields[head]
    if not rest:
        return field
    return _field_at(_optional_inner(field.annotation), rest)


def given_values(params: list[Param], values: dict[str, Any]) -> dict[str, Any]:
    """The options given on the command line, as a nested dict of config values."""
    out: dict[str, Any] = {}
    for p in params:
        value = values.get(p.name)
        if value is None or (isinstance(value, list) and not value):
            continue
        if p.convert is not None:
            value = p.convert(value)
        node = out
        *parents, leaf = p.target.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def _merge(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_config(stage: Stage, config: Path | None, given: dict[str, Any]) -> StageConfig:
    """A stage's config from an optional YAML file (the stage's section of it, or all of it)
    overlaid with the options given on the command line."""
    base: dict[str, Any] = {}
    if config is not None:
        data = load_yaml(config)
        section = data.get(stage.name)
        base = dict(section) if isinstance(section, dict) else data
    for name, others in stage.replaces.items():
        if name in given:
            for other in others:
                base.pop(other, None)
    source = str(config) if config else "command line"
    return stage.config.from_dict(_merge(base, given), source=source)


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML file with the stage's settings; options override it."
    ),
]


def command_for(stage: Stage, run: Callable[[Stage, StageConfig], None]) -> Callable[..., None]:
    """A typer command function for ``stage`` whose parameters are the config's fields;
    ``run(stage, cfg)`` is called with the built config."""
    params = stage_params(stage)

    def command(**values: Any) -> None:
        config = values.pop("config", None)
        values.pop("help_all", None)
        run(stage, build_config(stage, config, given_values(params, values)))

    config_param = inspect.Parameter(
        "config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ConfigOpt
    )
    help_all = inspect.Parameter(
        "help_all", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=HelpAllOpt
    )
    signature = [p.parameter for p in params] + [config_param, help_all]
    command.__signature__ = inspect.Signature(signature)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in signature}
    command.__name__ = stage.name
    command.__doc__ = stage.help
    return command
