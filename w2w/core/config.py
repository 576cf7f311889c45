"""Base of the per-stage configuration objects and their loading from YAML.

Each stage (ingest, train, predict, ...) has one small frozen config class, defined in the
stage's own module, that derives from :class:`StageConfig`. Configs are validated on the
driver; what crosses a Ray boundary is the plain dict from :meth:`StageConfig.to_dict`,
rebuilt into the typed object on the worker's first line with :meth:`StageConfig.from_dict`.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from w2w.core import storage
from w2w.core.errors import ConfigError, InputError
from w2w.core.guard import OutputKind, Target, overlap_problem


def canonical_path(value: Any) -> Any:
    """A path or URL in its one canonical spelling (absolute local path, URL without a
    trailing slash), so that no stage has to normalise paths again."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str) and value.strip():
        return storage.normalize(value)
    return value


#: Where block work runs: Ray tasks (parallel; a cluster under ``ray job submit``) or this
#: process alone.
Engine = Literal["ray", "local"]


def engine_field() -> Any:
    """The ``engine`` setting every block-wise stage has."""
    return Field(default="ray", description="'ray' (parallel tasks) or 'local' (this process)")


def overwrite_field(what: str = "an existing output") -> Any:
    """The ``overwrite`` setting of a stage that writes an output."""
    return Field(default=False, description=f"replace {what}")


#: The smallest share of a CPU or GPU Ray can reserve (it counts resources in 0.0001 units).
RAY_UNIT = 1e-4

#: A local path or URL, made canonical when the config is validated (on the driver):
#: accepts :class:`pathlib.Path` and stores a plain string.
PathStr = Annotated[str, BeforeValidator(canonical_path)]


class StageConfig(BaseModel):
    """A frozen, strictly-keyed configuration of one stage."""

    # No number of any setting is infinite or NaN (``inf`` given for an area, a learning rate
    # or an origin would pass a bound check and fail deep in a stage, or write a broken map).
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False
    )

    #: Name used in error messages and as the section name in pipeline YAML files.
    stage_name: ClassVar[str] = "stage"
    #: Fields naming what the stage reads (field -> what it is, for messages) and what it
    #: writes (field -> kind of output: "store", "file", "run" or "folder"; see
    #: :mod:`w2w.core.guard`, which the stage registry applies to every stage).
    inputs: ClassVar[dict[str, str]] = {}
    outputs: ClassVar[dict[str, OutputKind]] = {}

    def input_locations(self, *, expand: bool = True) -> list[tuple[str, str]]:
        """What the stage reads, as (what, path or URL) pairs. A stage whose inputs name
        other files (globs, list files, STAC documents) lists those too when ``expand``."""
        found = []
        for name, what in self.inputs.items():
            value = getattr(self, name, None)
            for path in value if isinstance(value, list) else [value]:
                if isinstance(path, str) and path:
                    found.append((what, path))
        return found

    def output_targets(self) -> list[Target]:
        """What the stage writes: every file, store, run or folder, with its kind."""
        return [
            Target(f"output {kind}" if name == "output" else name, getattr(self, name), kind)
            for name, kind in self.outputs.items()
            if getattr(self, name, None)
        ]

    @model_validator(mode="after")
    def _outputs_are_not_inputs(self) -> Self:
        problem = overlap_problem(self, expand=False)
        if problem:
            raise ValueError(problem)
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> Self:
        """Build a config from a plain dict, turning validation errors into :class:`ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(
                f"{source}: expected a mapping of keys to values for the "
                f"{cls.stage_name} stage, got {type(data).__name__}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_describe_validation_error(cls, exc, source)) from None

    @classmethod
    def from_yaml(cls, path: str | Path, *, section: str | None = None) -> Self:
        """Load a config from a YAML file, optionally from one top-level section of it."""
        data = load_yaml(path)
        source = str(path)
        if section is not None:
            if section not in data:
                raise ConfigError(
                    f"{path}: no '{section}:' section; add one with the {cls.stage_name} settings"
                )
            data = data[section]
            source = f"{path} [{section}]"
        return cls.from_dict(data or {}, source=source)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-serialisable dict of the settings, to send to Ray workers or save."""
        return self.model_dump(mode="json")

    def replace(self, **changes: Any) -> Self:
        """A validated copy with some fields changed (configs are frozen). Fields left unset
        stay unset in the copy (a stage may choose them, as training fits them to the scene)."""
        merged = {**self.model_dump(mode="json", exclude_unset=True), **changes}
        return type(self).from_dict(merged, source=f"{self.stage_name} settings")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the
    last silently: a setting written twice would be half ignored)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and the line it is on."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file and the problem."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"config file {path} is a folder; give the path of a YAML file")
    if not p.is_file():
        raise InputError(f"config file not found: {path}; check the path")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # a SafeLoader
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a text file in UTF-8 ({exc.reason} at byte {exc.start}); "
            "give a YAML config file"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)}); fix it") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def _describe_validation_error(cls: type[BaseModel], exc: ValidationError, source: str) -> str:
    """One line per problem: the key, what is wrong, and the valid keys for a typo."""
    valid = sorted(cls.model_fields)
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            if len(err["loc"]) == 1:
                problems.append(f"unknown key '{key}'{hint} (valid keys: {', '.join(valid)})")
            else:
                problems.append(f"unknown key '{loc}'")
        elif err["type"] == "missing":
            problems.append(f"'{loc}' is required")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if err["loc"]:
                problems.append(f"'{loc}': {msg} (got {err.get('input')!r})")
            else:
                problems.append(msg)
    stage = getattr(cls, "stage_name", cls.__name__)
    return f"{source}: invalid {stage} settings: " + "; ".join(problems)
