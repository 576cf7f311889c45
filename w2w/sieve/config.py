"""The settings of ``w2w sieve``: the minimum mapping unit, in pixels or hectares."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from w2w.core.config import Engine, PathStr, StageConfig, engine_field, overwrite_field
from w2w.core.errors import ConfigError, InputError
from w2w.core.grid import Grid
from w2w.core.guard import OutputKind

#: GDAL counts patch sizes in a C ``int`` and stops counting here.
MAX_SIZE = 2**31 - 1
M2_PER_HECTARE = 10_000.0


class SieveConfig(StageConfig):
    """Settings of ``w2w sieve``."""

    stage_name: ClassVar[str] = "sieve"
    inputs: ClassVar[dict[str, str]] = {"input": "mosaic"}
    outputs: ClassVar[dict[str, OutputKind]] = {"output": "store"}

    input: PathStr = Field(description="mosaic store to sieve (local path or s3:// URL)")
    output: PathStr = Field(description="mosaic store to create")
    min_pixels: int | None = Field(
        default=None,
        ge=1,
        le=MAX_SIZE,
        description="patches with fewer pixels are merged into a neighbour",
    )
    min_area_ha: float | None = Field(
        default=None, gt=0, description="the same, as an area in hectares (projected CRS only)"
    )
    connectivity: Literal[4, 8] = Field(
        default=4, description="4: patches join through edges; 8: through corners too"
    )
    engine: Engine = engine_field()
    overwrite: bool = overwrite_field()

    @model_validator(mode="after")
    def _one_unit(self) -> SieveConfig:
        if (self.min_pixels is None) == (self.min_area_ha is None):
            raise ValueError(
                "give exactly one minimum mapping unit: min_pixels (pixels) or min_area_ha "
                "(hectares)"
            )
        return self

    def min_unit_pixels(self, grid: Grid) -> int:
        """The minimum mapping unit in pixels of ``grid``: patches smaller than this merge.

        An area becomes the smallest pixel count whose area reaches it (a patch is kept when
        its area is at least ``min_area_ha``).
        """
        if self.min_pixels is not None:
            return self.min_pixels
        assert self.min_area_ha is not None
        pixel_area = grid.pixel_area_m2
        if pixel_area is None:
            raise InputError(
                f"{self.input} is in a CRS without metric units ({grid.describe()}), so "
                "min_area_ha cannot be turned into pixels; give min_pixels instead"
            )
        pixels = max(1, math.ceil(round(self.min_area_ha * M2_PER_HECTARE / pixel_area, 6)))
        if pixels > MAX_SIZE:
            raise ConfigError(
                f"min_area_ha {self.min_area_ha} is {pixels:,} pixels of {grid.describe()}, "
                f"more than the sieve can count ({MAX_SIZE:,}); give a smaller area"
            )
        return pixels
