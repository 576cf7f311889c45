"""The Zarr (v3) layout of w2w's stores. No other module imports zarr.

Two kinds of store share one layout convention:

* a **scene store** -- ``image`` (band, y, x) in the source dtype and an optional ``label``
  (y, x, uint8) -- written by ingest and read by training and prediction;
* a **mosaic store** -- ``class`` (y, x, uint8, 255 = nodata), ``confidence`` (y, x, uint8,
  top-class probability x 255) and ``blocks_done`` (one uint8 cell, in its own chunk, per
  prediction block: the manifest of finished blocks) -- written by prediction and sieve.

Geo metadata is stored three ways so that every tool finds it: w2w's own attributes under
``w2w`` (grid, bands, nodata, statistics, class table); a CF ``spatial_ref`` variable with
``crs_wkt`` and ``GeoTransform`` that ``xarray.open_zarr`` + rioxarray read back exactly;
and the Zarr ``proj:``/``spatial:`` conventions on the root group.

Rule: **every chunk has exactly one writer**. Writes go through :meth:`GeoStore.write`,
which refuses a window that does not cover whole chunks (edge chunks may be partial).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import zarr
import zarr.storage
from zarr.codecs import BloscCodec, BloscShuffle

from w2w import storage
from w2w.errors import InputError, OutputError
from w2w.grid import Grid, Window

FORMAT_VERSION = 1
CLASS_NODATA = 255
SPATIAL_REF = "spatial_ref"

StoreKind = Literal["scene", "mosaic"]


@dataclass(frozen=True)
class ClassInfo:
    """One entry of a class table: stored value, name and display colour (RGB)."""

    id: int
    name: str
    color: tuple[int, int, int]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON attributes."""
        return {"id": self.id, "name": self.name, "color": list(self.color)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassInfo:
        """Inverse of :meth:`to_dict`."""
        return cls(int(d["id"]), str(d["name"]), tuple(int(c) for c in d["color"]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class BandStats:
    """Statistics of one band over its valid pixels, computed during ingest."""

    mean: float
    std: float
    p2: float
    p98: float
    min: float
    max: float
    count: int

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict for JSON attributes."""
        return {
            "mean": self.mean,
            "std": self.std,
            "p2": self.p2,
            "p98": self.p98,
            "min": self.min,
            "max": self.max,
            "count": self.count,
        }


@dataclass(frozen=True)
class SceneInfo:
    """What a scene store says about itself (its ``w2w`` attributes)."""

    grid: Grid
    band_names: tuple[str, ...]
    dtype: str
    nodata: float | None
    chunk: int
    has_label: bool
    unlabelled: int | None = None
    classes: tuple[ClassInfo, ...] = ()
    stats: dict[str, BandStats] = field(default_factory=dict)
    class_histogram: dict[int, int] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def n_bands(self) -> int:
        """Number of image bands."""
        return len(self.band_names)


def _open_zarr_store(url: str, *, read_only: bool) -> zarr.abc.store.Store:
    """A zarr store object for a local path or an object-store URL."""
    if storage.is_remote(url):
        return zarr.storage.FsspecStore.from_url(
            url, storage_options=storage.storage_options(url), read_only=read_only
        )
    return zarr.storage.LocalStore(url, read_only=read_only)


def _compressors() -> list[BloscCodec]:
    return [BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.shuffle)]


def _spatial_ref_attrs(grid: Grid) -> dict[str, Any]:
    """CF grid-mapping attributes that rioxarray reads (``crs_wkt`` + ``GeoTransform``)."""
    return {
        "crs_wkt": grid.crs_wkt,
        "spatial_ref": grid.crs_wkt,
        "GeoTransform": " ".join(repr(float(v)) for v in grid.transform.to_gdal()),
    }


def _convention_attrs(grid: Grid) -> dict[str, Any]:
    """Zarr ``proj:`` / ``spatial:`` convention attributes, for tools that read those."""
    epsg = grid.crs.to_epsg(confidence_threshold=100)
    attrs: dict[str, Any] = {
        "proj:wkt2": grid.crs_wkt,
        "spatial:dimensions": ["y", "x"],
        "spatial:transform": list(grid.transform)[:6],
        "spatial:shape": [grid.height, grid.width],
    }
    if epsg:
        attrs["proj:code"] = f"EPSG:{epsg}"
    return attrs


class GeoStore:
    """Shared machinery of scene and mosaic stores: open, create, padded reads, owned writes."""

    kind: StoreKind

    def __init__(self, url: str, group: zarr.Group, *, writable: bool) -> None:
        self.url = url
        self._group = group
        self.writable = writable
        meta = dict(group.attrs.get("w2w", {}))
        if meta.get("kind") != self.kind:
            maker = "ingest" if self.kind == "scene" else "predict"
            raise InputError(
                f"{url} is not a w2w {self.kind} store (found kind {meta.get('kind')!r}); "
                f"give the path of a store made by `w2w {maker}`"
            )
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise InputError(
                f"{url} was written by a newer w2w (format {meta.get('format_version')}); "
                "upgrade w2w to read it"
            )
        self.meta = meta
        self.grid = Grid.from_attrs(meta["grid"])

    # -- opening and creating --------------------------------------------------------------

    @classmethod
    def open(cls, url: str, *, mode: Literal["r", "r+"] = "r") -> Any:
        """Open an existing store for reading (``r``) or for writing blocks (``r+``)."""
        u = storage.normalize(url)
        try:
            zstore = _open_zarr_store(u, read_only=mode == "r")
            group = zarr.open_group(store=zstore, mode=mode)
        except (
            FileNotFoundError,
            zarr.errors.GroupNotFoundError,
            zarr.errors.NodeTypeValidationError,
        ):
            raise InputError(
                f"no w2w {cls.kind} store at {url}; check the path or create it first"
            ) from None
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - object-store errors
            if storage.is_remote(u):
                raise storage.remote_error(u, exc) from None
            raise InputError(f"cannot open {url} as a Zarr store: {exc}") from None
        return cls(u, group, writable=mode != "r")

    @classmethod
    def _create_group(
        cls, url: str, grid: Grid, meta: dict[str, Any], *, overwrite: bool
    ) -> zarr.Group:
        u = storage.normalize(url)
        if storage.exists(u) and not overwrite:
            raise OutputError(
                f"output store {url} exists already; pass --overwrite to replace it "
                "or choose another path"
            )
        if storage.exists(u):
            storage.remove_tree(u)
        if not storage.is_remote(u):
            from pathlib import Path

            storage.ensure_writable_dir(Path(u).parent)
        try:
            zstore = _open_zarr_store(u, read_only=False)
            group = zarr.open_group(store=zstore, mode="w", zarr_format=3)
        except Exception as exc:  # noqa: BLE001
            if storage.is_remote(u):
                raise storage.remote_error(u, exc) from None
            raise OutputError(f"cannot create store {url}: {exc}") from None
        attrs = {
            "w2w": {
                "kind": cls.kind,
                "format_version": FORMAT_VERSION,
                "grid": grid.to_attrs(),
                **meta,
            },
            **_convention_attrs(grid),
        }
        group.attrs.update(attrs)
        ref = group.create_array(SPATIAL_REF, shape=(), dtype="int32", fill_value=0)
        ref.attrs.update(_spatial_ref_attrs(grid))
        ref[...] = 0
        if grid.transform.b == 0 and grid.transform.d == 0:
            t = grid.transform
            xs = t.c + (np.arange(grid.width) + 0.5) * t.a
            ys = t.f + (np.arange(grid.height) + 0.5) * t.e
            for name, values in (("x", xs), ("y", ys)):
                arr = group.create_array(
                    name,
                    shape=values.shape,
                    dtype="float64",
                    chunks=(max(1, len(values)),),
                    dimension_names=[name],
                    fill_value=np.nan,
                )
                arr.attrs.update(
                    {
                        "axis": name.upper(),
                        "units": "metre",
                        "standard_name": "projection_x_coordinate"
                        if name == "x"
                        else "projection_y_coordinate",
                    }
                )
                arr[:] = values
        return group

    def _create_raster(
        self,
        name: str,
        *,
        dtype: str,
        fill_value: float | int,
        chunk: int,
        bands: int | None = None,
        shard: int | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> None:
        g = self.grid
        shape: tuple[int, ...] = (g.height, g.width)
        chunks: tuple[int, ...] = (min(chunk, g.height), min(chunk, g.width))
        dims = ["y", "x"]
        shards = None
        if shard:
            shards = (max(shard, chunks[0]), max(shard, chunks[1]))
        if bands is not None:
            shape = (bands, *shape)
            chunks = (bands, *chunks)
            dims = ["band", *dims]
            if shards:
                shards = (bands, *shards)
        arr = self._group.create_array(
            name,
            shape=shape,
            chunks=chunks,
            shards=shards,
            dtype=dtype,
            fill_value=fill_value,
            compressors=_compressors(),
            dimension_names=dims,
        )
        arr.attrs.update({"grid_mapping": SPATIAL_REF, "coordinates": SPATIAL_REF, **(attrs or {})})

    def finalize(self) -> None:
        """Write consolidated metadata so that readers (xarray) open the store in one request."""
        with warnings.catch_warnings():
            # zarr notes that consolidated metadata is not (yet) part of the v3 spec; xarray
            # and zarr-python read it, other readers fall back to the per-array metadata.
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            zarr.consolidate_metadata(self._group.store)

    # -- metadata --------------------------------------------------------------------------

    def update_meta(self, **changes: Any) -> None:
        """Merge entries into the ``w2w`` attributes (driver only; not from block tasks)."""
        self.meta = {**self.meta, **changes}
        self._group.attrs["w2w"] = self.meta

    def array_names(self) -> list[str]:
        """Names of the arrays in the store."""
        return sorted(self._group.array_keys())

    def _array(self, name: str) -> zarr.Array:
        try:
            arr = self._group[name]
        except KeyError:
            raise InputError(f"{self.url} has no '{name}' array") from None
        assert isinstance(arr, zarr.Array)
        return arr

    def chunk_shape(self, name: str) -> tuple[int, int]:
        """(rows, cols) of the write unit of an array: its shard if sharded, else its chunk."""
        arr = self._array(name)
        unit = arr.shards or arr.chunks
        return int(unit[-2]), int(unit[-1])

    # -- reading and writing ---------------------------------------------------------------

    def read(self, name: str, window: Window, fill: float | int) -> np.ndarray:
        """Read ``window`` of an array; pixels outside the grid are ``fill``."""
        arr = self._array(name)
        lead = arr.shape[:-2]
        out = np.full((*lead, window.height, window.width), fill, dtype=arr.dtype)
        inner = window.intersect(self.grid.full_window)
        if inner is not None:
            rel = inner.relative_to(window)
            out[(..., *rel.slices)] = arr[(..., *inner.slices)]
        return out

    def write(self, name: str, window: Window, data: np.ndarray) -> None:
        """Write ``data`` into ``window``, which must cover whole write units (chunks/shards).

        A window that would share a chunk with another writer is refused: Zarr has no locks,
        and two writers of one chunk silently lose data.
        """
        if not self.writable:
            raise OutputError(f"{self.url} was opened read-only")
        self.check_owned(name, window)
        arr = self._array(name)
        if data.shape[-2:] != (window.height, window.width):
            raise ValueError(f"data of shape {data.shape} does not fit window {window}")
        arr[(..., *window.slices)] = data

    def check_owned(self, name: str, window: Window) -> None:
        """Raise ``ValueError`` unless ``window`` is made of whole write units of ``name``."""
        ch, cw = self.chunk_shape(name)
        g = self.grid
        ok = (
            window.row % ch == 0
            and window.col % cw == 0
            and (window.row_stop % ch == 0 or window.row_stop == g.height)
            and (window.col_stop % cw == 0 or window.col_stop == g.width)
            and self.grid.full_window.contains(window)
        )
        if not ok:
            raise ValueError(
                f"window {window} is not aligned to the {ch} x {cw} write units of "
                f"{self.url}/{name}; each chunk must have exactly one writer"
            )


class SceneStore(GeoStore):
    """Scene store: ``image`` (band, y, x) and optional ``label`` (y, x)."""

    kind: StoreKind = "scene"

    @classmethod
    def create(
        cls,
        url: str,
        grid: Grid,
        *,
        band_names: list[str],
        dtype: str,
        nodata: float | None,
        chunk: int = 512,
        with_label: bool = False,
        unlabelled: int | None = None,
        classes: list[ClassInfo] | None = None,
        source: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> SceneStore:
        """Create an empty scene store (metadata and empty arrays) ready for block writes."""
        meta = {
            "band_names": list(band_names),
            "dtype": str(np.dtype(dtype)),
            "nodata": nodata,
            "chunk": chunk,
            "has_label": with_label,
            "unlabelled": unlabelled,
            "classes": [c.to_dict() for c in classes or []],
            "stats": {},
            "class_histogram": {},
            "source": source or {},
            "complete": False,
        }
        group = cls._create_group(url, grid, meta, overwrite=overwrite)
        store = cls(storage.normalize(url), group, writable=True)
        fill = nodata if nodata is not None else 0
        store._create_raster(
            "image",
            dtype=dtype,
            fill_value=fill,
            chunk=chunk,
            bands=len(band_names),
            attrs={"band_names": list(band_names), "nodata": nodata},
        )
        if with_label:
            lab_fill = unlabelled if unlabelled is not None else 0
            store._create_raster("label", dtype="uint8", fill_value=lab_fill, chunk=chunk)
        return store

    @property
    def info(self) -> SceneInfo:
        """The store's metadata as a typed object."""
        m = self.meta
        return SceneInfo(
            grid=self.grid,
            band_names=tuple(m["band_names"]),
            dtype=m["dtype"],
            nodata=m["nodata"],
            chunk=int(m["chunk"]),
            has_label=bool(m["has_label"]),
            unlabelled=m.get("unlabelled"),
            classes=tuple(ClassInfo.from_dict(c) for c in m.get("classes", [])),
            stats={k: BandStats(**v) for k, v in m.get("stats", {}).items()},
            class_histogram={int(k): int(v) for k, v in m.get("class_histogram", {}).items()},
            source=dict(m.get("source", {})),
        )

    def read_image(self, window: Window) -> np.ndarray:
        """(band, h, w) pixels of ``window``; outside the grid they are nodata (or 0)."""
        nodata = self.meta["nodata"]
        return self.read("image", window, nodata if nodata is not None else 0)

    def read_label(self, window: Window) -> np.ndarray:
        """(h, w) labels of ``window``; outside the grid, and where absent, the unlabelled value."""
        unl = self.meta.get("unlabelled")
        fill = unl if unl is not None else 0
        if not self.meta["has_label"]:
            raise InputError(
                f"{self.url} has no labels; ingest a label raster with `w2w ingest --label ...`"
            )
        return self.read("label", window, fill)

    def valid_mask(self, image: np.ndarray, window: Window | None = None) -> np.ndarray:
        """(h, w) bool: pixels whose every band is finite and not nodata (and inside the grid)."""
        valid = valid_pixels(image, self.meta["nodata"])
        if window is not None:
            inside = np.zeros(valid.shape, dtype=bool)
            inner = window.intersect(self.grid.full_window)
            if inner is not None:
                inside[inner.relative_to(window).slices] = True
            valid &= inside
        return valid

    def mark_complete(self, **meta: Any) -> None:
        """Record final metadata (statistics, histogram), mark the store complete, consolidate."""
        self.update_meta(**meta, complete=True)
        self.finalize()

    @classmethod
    def open(cls, url: str, *, mode: Literal["r", "r+"] = "r") -> SceneStore:
        """Open a scene store; refuses one whose ingest did not finish."""
        store: SceneStore = super().open(url, mode=mode)
        if mode == "r" and not store.meta.get("complete", False):
            raise InputError(
                f"scene store {url} is incomplete (its ingest did not finish); "
                "run `w2w ingest ... --overwrite` again"
            )
        return store


def valid_pixels(image: np.ndarray, nodata: float | None) -> np.ndarray:
    """(h, w) bool mask of pixels valid in every band of a (band, h, w) array."""
    if np.issubdtype(image.dtype, np.floating):
        valid = np.isfinite(image).all(axis=0)
    else:
        valid = np.ones(image.shape[-2:], dtype=bool)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        valid &= (image != np.asarray(nodata).astype(image.dtype)).all(axis=0)
    return valid


class MosaicStore(GeoStore):
    """Mosaic store: ``class``, ``confidence`` and the ``blocks_done`` manifest."""

    kind: StoreKind = "mosaic"

    @classmethod
    def create(
        cls,
        url: str,
        grid: Grid,
        *,
        block: int,
        classes: list[ClassInfo],
        chunk: int | None = None,
        shard: bool = False,
        provenance: dict[str, Any] | None = None,
        with_confidence: bool = True,
        overwrite: bool = False,
    ) -> MosaicStore:
        """Create an empty mosaic whose write unit (chunk, or shard when ``shard``) is ``block``."""
        chunk = chunk or block
        if shard and block % chunk:
            raise ValueError(f"block {block} must be a multiple of the chunk {chunk} when sharding")
        if not shard and chunk != block:
            raise ValueError("without sharding the block must equal the chunk size")
        meta = {
            "block": block,
            "chunk": chunk,
            "sharded": shard,
            "classes": [c.to_dict() for c in classes],
            "provenance": provenance or {},
            "complete": False,
        }
        group = cls._create_group(url, grid, meta, overwrite=overwrite)
        store = cls(storage.normalize(url), group, writable=True)
        shard_size = block if shard else None
        store._create_raster(
            "class",
            dtype="uint8",
            fill_value=CLASS_NODATA,
            chunk=chunk,
            shard=shard_size,
            attrs={"nodata": CLASS_NODATA},
        )
        if with_confidence:
            store._create_raster(
                "confidence",
                dtype="uint8",
                fill_value=0,
                chunk=chunk,
                shard=shard_size,
                attrs={"scale": 1 / 255},
            )
        rows, cols = store.block_grid_shape
        done = group.create_array(
            "blocks_done",
            shape=(rows, cols),
            chunks=(1, 1),
            dtype="uint8",
            fill_value=0,
            dimension_names=["block_row", "block_col"],
        )
        done.attrs.update({"block": block})
        # Per block, the valid input pixels its writer expects to have classified: what the
        # coverage check compares the written classes against (-1: block not written).
        counts = group.create_array(
            "block_valid_pixels",
            shape=(rows, cols),
            chunks=(1, 1),
            dtype="int64",
            fill_value=-1,
            dimension_names=["block_row", "block_col"],
        )
        counts.attrs.update({"block": block})
        return store

    @property
    def block(self) -> int:
        """Edge length of a prediction block (= the arrays' write unit)."""
        return int(self.meta["block"])

    @property
    def classes(self) -> tuple[ClassInfo, ...]:
        """The class table."""
        return tuple(ClassInfo.from_dict(c) for c in self.meta["classes"])

    @property
    def block_grid_shape(self) -> tuple[int, int]:
        """Number of blocks along (rows, cols)."""
        return math.ceil(self.grid.height / self.block), math.ceil(self.grid.width / self.block)

    def blocks(self) -> list[Window]:
        """All prediction blocks, row-major."""
        return self.grid.block_windows(self.block)

    def done_blocks(self) -> np.ndarray:
        """(block rows, block cols) bool array: which blocks the manifest records as finished."""
        return np.asarray(self._array("blocks_done")[...]).astype(bool)

    def mark_block_done(self, window: Window, valid_pixels: int | None = None) -> None:
        """Record a finished block, with the valid input pixels it classified; call only after
        its data has been written."""
        i, j = window.row // self.block, window.col // self.block
        if valid_pixels is not None and "block_valid_pixels" in self.array_names():
            self._array("block_valid_pixels")[i, j] = int(valid_pixels)
        self._array("blocks_done")[i, j] = 1

    def clear_block(self, window: Window) -> None:
        """Forget a block in the manifest, so that the next run predicts it again."""
        i, j = window.row // self.block, window.col // self.block
        self._array("blocks_done")[i, j] = 0

    def expected_valid_pixels(self) -> np.ndarray | None:
        """(block rows, block cols) valid input pixels per written block (-1 where unknown),
        or None for a mosaic made before w2w recorded them."""
        if "block_valid_pixels" not in self.array_names():
            return None
        return np.asarray(self._array("block_valid_pixels")[...])

    def read_class(self, window: Window) -> np.ndarray:
        """(h, w) classes of ``window``; 255 outside the grid and where not predicted."""
        return self.read("class", window, CLASS_NODATA)

    def read_confidence(self, window: Window) -> np.ndarray:
        """(h, w) confidence x 255 of ``window``; 0 outside the grid."""
        return self.read("confidence", window, 0)

    @property
    def has_confidence(self) -> bool:
        """Whether the mosaic carries a confidence array."""
        return "confidence" in self.array_names()

    def mark_complete(self, **meta: Any) -> None:
        """Mark the mosaic complete (every block done) and consolidate its metadata."""
        self.update_meta(**meta, complete=True)
        self.finalize()
