"""The settings of ``w2w export``."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from w2w.core.config import PathStr, StageConfig, overwrite_field
from w2w.core.guard import OutputKind, Target

Compression = Literal["deflate", "zstd", "lzw"]
#: Vector formats of ``vector``, by file extension: the GDAL driver that writes each.
VECTOR_DRIVERS = {".gpkg": "GPKG", ".fgb": "FlatGeobuf"}


def iso_utc(when: dt.datetime) -> str:
    """A time in UTC as ISO 8601 with a ``Z``, to the second (STAC's form)."""
    return when.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class ExportConfig(StageConfig):
    """Settings of ``w2w export``."""

    stage_name: ClassVar[str] = "export"
    inputs: ClassVar[dict[str, str]] = {"input": "mosaic"}
    outputs: ClassVar[dict[str, OutputKind]] = {"output": "file", "vector": "file"}

    input: PathStr = Field(description="mosaic store (local path or s3:// URL)")
    output: PathStr = Field(description="the class COG to write: a .tif path or s3:// URL")
    confidence: Literal["none", "band", "file"] = Field(
        default="file",
        description="confidence as <name>_confidence.tif beside the map (file), as a second "
        "band (band), or not at all (none)",
    )
    probabilities: bool = Field(
        default=False,
        description="also export the per-class probabilities of a mosaic predicted with "
        "--probabilities, as <name>_probabilities.tif (one band per class)",
    )
    blocksize: int = Field(default=512, ge=64, le=4096, description="COG tile edge, pixels")
    compress: Compression = Field(
        default="deflate",
        description="COG compression; deflate is read by every GIS, zstd is smaller and "
        "faster but needs GDAL >= 2.3 built with zstd on the reading side",
    )
    overview_resampling: Literal["mode", "nearest"] = Field(
        default="mode", description="overviews of the classes; confidence always uses average"
    )
    vector: PathStr | None = Field(
        default=None,
        description="also write the map as polygons (class_id, class_name, area_ha) to this "
        ".gpkg (GeoPackage) or .fgb (FlatGeobuf) path or s3:// URL; default: no vector file",
    )
    quicklook_size: int = Field(default=1024, ge=64, le=8192, description="quicklook long edge")
    datetime: str | None = Field(
        default=None,
        description="nominal date of the map for the STAC Item (e.g. of the imagery), ISO "
        "8601; default: the time of export",
    )
    allow_incomplete: bool = Field(
        default=False, description="export a mosaic whose prediction did not finish"
    )
    cache_mb: int = Field(
        default=256, ge=8, le=65536, description="GDAL block cache; bounds export memory"
    )
    workdir: PathStr | None = Field(
        default=None,
        description="local scratch folder (needs about 3x the COG's size); default: the "
        "system temporary folder",
    )
    overwrite: bool = overwrite_field()

    def output_targets(self) -> list[Target]:
        """Every file of the export's set (the COG, its sidecars, styles, STAC Items)."""
        return [Target("export file", u, "file") for u in export_targets(self).all()]

    @field_validator("blocksize")
    @classmethod
    def _tile_multiple_of_16(cls, v: int) -> int:
        if v % 16:
            raise ValueError(f"COG tiles must be a multiple of 16 pixels; try {v - v % 16 or 16}")
        return v

    @field_validator("output")
    @classmethod
    def _tif_name(cls, v: str) -> str:
        if not v.lower().endswith((".tif", ".tiff")):
            raise ValueError("the output must be a GeoTIFF name ending in .tif, e.g. map.tif")
        return v

    @field_validator("vector")
    @classmethod
    def _vector_name(cls, v: str | None) -> str | None:
        if v is not None and not v.lower().endswith(tuple(VECTOR_DRIVERS)):
            raise ValueError(
                "the vector output must be a GeoPackage (.gpkg) or FlatGeobuf (.fgb) name, "
                "e.g. landcover.gpkg"
            )
        return v

    @field_validator("datetime")
    @classmethod
    def _iso_datetime(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            parsed = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("not an ISO 8601 date or time, e.g. 2024-06-30") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return iso_utc(parsed)


@dataclass(frozen=True)
class ExportTargets:
    """Where each exported file goes (local paths or URLs)."""

    cog: str
    confidence: str | None
    stac: str
    quicklook: str
    style: str
    sidecar: str  # GDAL PAM: category names and RAT of the COG's class band
    sld: str
    model: str
    probabilities: str | None = None
    vector: str | None = None

    def all(self) -> list[str]:
        """Every file the export writes (the model Item only where the bundle is readable)."""
        files = (self.cog, self.sidecar, self.confidence, self.probabilities, self.quicklook)
        return [u for u in (*files, self.style, self.sld, self.vector, self.model, self.stac) if u]


def export_targets(cfg: ExportConfig) -> ExportTargets:
    """The file names an export writes: the COG and its siblings (same stem)."""
    cog = cfg.output
    stem = cog[: cog.rfind(".")]
    return ExportTargets(
        cog=cog,
        confidence=f"{stem}_confidence.tif" if cfg.confidence == "file" else None,
        stac=f"{stem}.json",
        quicklook=f"{stem}_quicklook.png",
        style=f"{stem}.qml",
        sidecar=f"{cog}.aux.xml",
        sld=f"{stem}.sld",
        model=f"{stem}_model.json",
        probabilities=f"{stem}_probabilities.tif" if cfg.probabilities else None,
        vector=cfg.vector,
    )
