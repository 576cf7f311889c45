"""The settings of ``w2w ingest``, and the compact forms they accept on a command line.

A label map is ``SOURCE[,SOURCE...]=CLASS`` groups separated by ``;`` (``'-5=0;2,3,6=1'``),
class names are ``ID=NAME`` items separated by ``,`` (``'1=forest,2=water'``), and lists are
comma-separated; a YAML file may use these strings or plain mappings and lists.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BeforeValidator, Field, field_validator, model_validator

from w2w.core.config import Engine, PathStr, StageConfig, engine_field, overwrite_field
from w2w.core.errors import ConfigError


def parse_label_map(text: str | None) -> dict[int, int] | None:
    """Parse ``'-5=0;2,3,6=1'`` into ``{-5: 0, 2: 1, 3: 1, 6: 1}``."""
    if text is None:
        return None
    mapping: dict[int, int] = {}
    for group in filter(None, (g.strip() for g in text.replace(" ", ";").split(";"))):
        if "=" not in group:
            raise ConfigError(
                f"label map entry '{group}' has no '='; write SOURCE[,SOURCE...]=CLASS "
                "groups separated by ';', e.g. '-5=0;2,3,6=1'"
            )
        sources, target = group.rsplit("=", 1)
        try:
            tgt = int(target)
            for src in sources.split(","):
                mapping[int(src)] = tgt
        except ValueError:
            raise ConfigError(f"label map entry '{group}' is not made of integers") from None
    return mapping


def parse_class_names(text: str | None) -> dict[int, str] | None:
    """Parse ``'1=forest,2=water'`` into ``{1: 'forest', 2: 'water'}``."""
    if text is None:
        return None
    names: dict[int, str] = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        key, sep, name = item.partition("=")
        if not sep or not key.strip().lstrip("-").isdigit() or not name.strip():
            raise ConfigError(f"class entry '{item}' should look like ID=NAME, e.g. '1=forest'")
        names[int(key)] = name.strip()
    return names


def _from_text(parse: Any) -> Any:
    """A before-validator that parses a string with ``parse`` (other values pass through)."""

    def validate(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return parse(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    return BeforeValidator(validate)


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in _split(text)]
    except ValueError:
        raise ConfigError(f"'{text}' should be numbers separated by commas") from None


LabelMap = Annotated[dict[int, int], _from_text(parse_label_map)]
ClassNames = Annotated[dict[int, str], _from_text(parse_class_names)]
CommaList = Annotated[list[str], _from_text(_split)]
CommaFloats = Annotated[list[float], _from_text(_floats)]


class IngestConfig(StageConfig):
    """Settings of ``w2w ingest``."""

    stage_name: ClassVar[str] = "ingest"
    inputs: ClassVar[dict[str, str]] = {"images": "image", "label": "label raster"}
    outputs: ClassVar[tuple[str, ...]] = ("output",)

    images: list[PathStr] = Field(
        min_length=1, description="image raster(s); bands stacked in order"
    )
    output: PathStr = Field(description="scene store to create (local path or s3:// URL)")
    label: PathStr | None = Field(default=None, description="label raster (one band, integer)")
    band_names: CommaList | None = Field(
        default=None, description="one name per stacked band, e.g. B02,B03,B04"
    )
    nodata: CommaFloats | None = Field(
        default=None, description="nodata per image source (one value applies to all)"
    )
    label_nodata: int | None = Field(default=None, description="label value meaning no data")
    label_map: LabelMap = Field(
        default_factory=dict, description="label value -> class id, e.g. '-5=0;2,3,6=1'"
    )
    unlabelled: int = Field(default=0, ge=0, le=254, description="class id meaning 'no label'")
    classes: ClassNames = Field(
        default_factory=dict, description="class id -> name, e.g. '1=forest,2=water'"
    )
    reproject_labels: bool = Field(
        default=False, description="warp labels on another grid onto the image grid"
    )
    chunk: int = Field(default=512, ge=16, le=8192, description="store chunk edge (pixels)")
    block: int = Field(default=2048, ge=16, description="task block edge; a multiple of chunk")
    engine: Engine = engine_field()
    overwrite: bool = overwrite_field()

    @field_validator("label_map")
    @classmethod
    def _map_targets_fit(cls, v: dict[int, int]) -> dict[int, int]:
        bad = {k: t for k, t in v.items() if not 0 <= t <= 254}
        if bad:
            raise ValueError(f"label_map targets must be class ids 0-254, got {bad}")
        return v

    @field_validator("classes")
    @classmethod
    def _class_ids_fit(cls, v: dict[int, str]) -> dict[int, str]:
        bad = [k for k in v if not 0 <= k <= 254]
        if bad:
            raise ValueError(f"class ids must be 0-254, got {bad}")
        names = list(v.values())
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(
                f"class name {repeated[0]!r} is given to several ids; names must be unique"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> IngestConfig:
        if self.block % self.chunk:
            raise ValueError(f"block ({self.block}) must be a multiple of chunk ({self.chunk})")
        if self.nodata is not None and len(self.nodata) not in (1, len(self.images)):
            raise ValueError(
                f"give one nodata value, or one per image source ({len(self.images)}), "
                f"not {len(self.nodata)}"
            )
        if self.label is None and (
            self.label_map or self.reproject_labels or self.label_nodata is not None
        ):
            raise ValueError("label_map, label_nodata and reproject_labels need a label raster")
        return self
