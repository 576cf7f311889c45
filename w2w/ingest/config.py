"""The settings of ``w2w ingest``, and the compact forms they accept on a command line.

A label map is ``SOURCE[,SOURCE...]=CLASS`` groups separated by ``;`` (``'-5=0;2,3,6=1'``),
class names are ``ID=NAME`` items separated by ``,`` (``'1=forest,2=water'``), and lists are
comma-separated; a YAML file may use these strings or plain mappings and lists.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from w2w.core.config import Engine, PathStr, StageConfig, engine_field, overwrite_field
from w2w.core.errors import ConfigError
from w2w.core.guard import OutputKind
from w2w.ingest.vectors import is_vector


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
#: Nodata values: NaN is the nodata of many float rasters, so these floats may be NaN (or
#: infinite), unlike every other number of a config (:class:`StageConfig`).
NodataFloat = Annotated[float, Field(allow_inf_nan=True)]
CommaFloats = Annotated[list[float], _from_text(_floats)]
CommaNodata = Annotated[list[NodataFloat], _from_text(_floats)]
CommaInts = Annotated[list[int], _from_text(lambda t: [int(v) for v in _floats(t)])]


class IngestConfig(StageConfig):
    """Settings of ``w2w ingest``."""

    stage_name: ClassVar[str] = "ingest"
    inputs: ClassVar[dict[str, str]] = {
        "images": "image",
        "tiles": "tile",
        "label": "labels",
        "aoi": "boundary",
    }
    outputs: ClassVar[dict[str, OutputKind]] = {"output": "store"}

    images: list[PathStr] | None = Field(
        default=None,
        description="image raster(s) on one pixel grid; several are stacked band by band",
    )
    tiles: CommaList | None = Field(
        default=None,
        description="image tiles on any grids, mosaicked onto the target grid: paths, globs, "
        "@list.txt, VRTs, or a STAC ItemCollection / catalog (.json)",
    )
    output: PathStr = Field(description="scene store to create (local path or s3:// URL)")
    label: PathStr | None = Field(
        default=None,
        description="labels: a raster of class codes (integer, or float holding whole codes), "
        "or a vector file of polygons or points (with label_field)",
    )
    label_field: str | None = Field(
        default=None, description="vector labels: the field holding each feature's class code"
    )
    crs: str | None = Field(
        default=None, description="tiles: the target grid's CRS, e.g. EPSG:6372"
    )
    resolution: float | None = Field(
        default=None, gt=0, description="tiles: the target grid's pixel size, in CRS units"
    )
    bounds: CommaFloats | None = Field(
        default=None,
        description="tiles: left,bottom,right,top of the target grid in its CRS (default: the "
        "boundary's, else the tiles'); snapped to whole pixels as gdalwarp -tap",
    )
    aoi: PathStr | None = Field(
        default=None,
        description="the state's boundary (any vector format): pixels outside are nodata and "
        "blocks outside are never written",
    )
    aoi_where: str | None = Field(
        default=None, description="boundary features to keep (OGR SQL), e.g. NAME='Chihuahua'"
    )
    bands: CommaList | None = Field(
        default=None,
        description="STAC tiles: bands to take, by asset key or common name, in order",
    )
    resampling: Literal["nearest", "bilinear", "cubic", "average"] = Field(
        default="bilinear", description="tiles: how imagery is resampled onto the target grid"
    )
    overlap: Literal["first", "last", "median"] = Field(
        default="first",
        description="tiles: where tiles overlap, the first valid pixel in the order given, the "
        "last, or the median of the valid values per band (a per-pixel composite)",
    )
    mask_band: int | None = Field(
        default=None, ge=1, description="tiles: a band of each file that is a mask, not data"
    )
    mask_asset: str | None = Field(
        default=None, description="STAC tiles: the asset that is a mask, e.g. SCL"
    )
    mask_values: CommaInts = Field(
        default_factory=list,
        description="mask values that make a pixel invalid, e.g. 3,8,9,10,11 (Sentinel-2 SCL "
        "cloud shadow, clouds, cirrus, snow)",
    )
    band_names: CommaList | None = Field(
        default=None, description="one name per stacked band, e.g. B02,B03,B04"
    )
    nodata: CommaNodata | None = Field(
        default=None, description="nodata per image source (one value applies to all)"
    )
    label_nodata: NodataFloat | None = Field(
        default=None, description="label value meaning no data"
    )
    label_map: LabelMap = Field(
        default_factory=dict, description="label value -> class id, e.g. '-5=0;2,3,6=1'"
    )
    label_map_rest: Literal["error", "unlabelled", "keep"] = Field(
        default="error",
        description="label codes label_map does not name: an error, no label, or kept as "
        "class ids of their own",
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

    def input_locations(self, *, expand: bool = True) -> list[tuple[str, str]]:
        """Images, boundary and labels, and the tiles: a glob's folder, and with ``expand``
        every file a glob or list file names, list files themselves, STAC documents and
        their assets' hrefs."""
        found = [(w, p) for w, p in super().input_locations(expand=False) if w != "tile"]
        for entry in self.tiles or []:
            found.append(("tile", _fixed_part(entry.removeprefix("@"))))
        if expand and self.tiles:
            from w2w.ingest.stac import asset_hrefs, is_stac
            from w2w.ingest.tiles import expand as expand_entries

            for path in expand_entries(list(self.tiles)):
                found.append(("tile", path))
                if is_stac(path):
                    found += [("STAC asset", href) for href in asset_hrefs(path)]
        return found

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
        if not self.images and not self.tiles:
            raise ValueError(
                "'images' is required (rasters on one grid), or 'tiles' (tiles on any grids "
                "with crs and resolution)"
            )
        if self.images and self.tiles:
            raise ValueError("give either images (one grid) or tiles (any grids), not both")
        self._check_tiles()
        if (
            self.images
            and self.nodata is not None
            and len(self.nodata) not in (1, len(self.images))
        ):
            raise ValueError(
                f"give one nodata value, or one per image source ({len(self.images)}), "
                f"not {len(self.nodata)}"
            )
        if self.label is None and (
            self.label_map or self.reproject_labels or self.label_nodata is not None
        ):
            raise ValueError("label_map, label_nodata and reproject_labels need a label raster")
        if self.label_field and not (self.label and is_vector(self.label)):
            raise ValueError("label_field needs vector labels (label: a .gpkg, .shp, ... file)")
        if self.label and is_vector(self.label) and not self.label_field:
            raise ValueError(
                f"label {self.label} is a vector file: give the field that holds the class "
                "code with label_field (--label-field)"
            )
        return self

    def _check_tiles(self) -> None:
        if not self.tiles:
            grid_settings = (self.crs, self.resolution, self.bounds, self.aoi, self.bands)
            if any(v is not None for v in grid_settings) or self.mask_values:
                raise ValueError(
                    "crs, resolution, bounds, aoi, bands and masks go with tiles (--tiles); "
                    "images are read on their own grid"
                )
            return
        if self.crs is None or self.resolution is None:
            raise ValueError(
                "tiles are mosaicked onto the state's grid: give its crs and resolution "
                "(e.g. --crs EPSG:6372 --resolution 20)"
            )
        if self.bounds is not None and len(self.bounds) != 4:
            raise ValueError("bounds are four numbers: left,bottom,right,top")
        if self.bounds is None and self.aoi is None:
            raise ValueError(
                "tiles need the area to map: a boundary (--aoi state.gpkg) or --bounds"
            )
        if self.reproject_labels:
            raise ValueError("with tiles, labels are always warped onto the target grid")

    @property
    def vector_labels(self) -> bool:
        """Whether the labels are a vector file."""
        return bool(self.label and is_vector(self.label))


def _fixed_part(entry: str) -> str:
    """A path, or for a glob the folder above its first wildcard."""
    cut = min((i for i, ch in enumerate(entry) if ch in "*?["), default=None)
    if cut is None:
        return entry
    return entry[:cut].rsplit("/", 1)[0] or "/"
