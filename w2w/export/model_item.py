"""The model that made a map, described as a STAC Item with the Machine Learning Model
(MLM) extension, so catalogues and serving stacks know what to feed it and what it returns.

Written by ``w2w export`` as ``<map>_model.json`` beside the map's Item, which links to it
(``derived_from``). It describes the bundle the mosaic's provenance names, and only if that
bundle is still the one that predicted the map (its content hash equals the mosaic's):

* ``mlm:input``: the bands by name (also as ``raster:bands`` of the model asset, where MLM
  1.4 looks them up), the chip shape
  ``[-1, bands, chip, chip]`` in float32, and the per-band value scaling of the bundle's
  normaliser (``min-max`` over the clipped percentile range, or ``z-score``);
* ``mlm:output``: per-class scores ``[-1, classes, chip, chip]``; the classes list which
  output channel is which class (``value`` = channel, ``title`` = class name and map value);
* the bundle file as the ``weights`` asset (``mlm:model``, artifact type ``safetensors``),
  with the architecture, encoder, parameter count and the suggested prediction batch size.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from w2w.core import storage
from w2w.core.errors import W2WError
from w2w.core.provenance import records
from w2w.core.store import MosaicStore
from w2w.export.stac_schemas import EXTENSIONS

log = logging.getLogger("w2w")

SAFETENSORS_MEDIA_TYPE = "application/octet-stream; application=safetensors"


def model_item(
    mosaic: MosaicStore, item_url: str, geometry: dict[str, Any] | None, bbox: list[float] | None
) -> dict[str, Any] | None:
    """The MLM Item of the bundle that predicted ``mosaic``, to be written at ``item_url``;
    None (with a warning) when the bundle cannot be read or is no longer that bundle."""
    from w2w.export.hrefs import absolute_url, relative_href
    from w2w.export.stac import slug
    from w2w.model.bundle import load_bundle

    provenance = _predict_provenance(mosaic.provenance)
    url, recorded = provenance.get("bundle"), provenance.get("bundle_hash")
    if not isinstance(url, str) or not isinstance(recorded, str):
        return None
    try:
        if not storage.exists(url):
            raise FileNotFoundError(url)
        # The header's content hash is compared with the mosaic's below; the weights are
        # not hashed again (a state's export should not pay for reading them twice).
        bundle = load_bundle(url, verify=False, weights=False)
    except (OSError, W2WError) as exc:
        log.warning("no model Item: the bundle %s cannot be read (%s)", url, exc)
        return None
    if bundle.content_hash != recorded:
        log.warning("no model Item: the bundle at %s is not the one that made the map", url)
        return None
    import pystac

    spec, chip = bundle.spec, bundle.chip_size
    properties: dict[str, Any] = {
        "title": f"Model {spec.arch}/{spec.encoder} that predicted the map",
        "mlm:name": f"w2w-{slug(spec.arch)}-{slug(spec.encoder)}",
        "mlm:architecture": spec.arch,
        "mlm:tasks": ["semantic-segmentation"],
        "mlm:framework": "pytorch",
        "mlm:pretrained": False,
        "mlm:total_parameters": bundle.parameters,
        "mlm:input": [_input(bundle)],
        "mlm:output": [_output(bundle)],
        "w2w:bundle_hash": bundle.content_hash,
        "w2w:encoder": spec.encoder,
        "w2w:chip_size": chip,
    }
    batch = (provenance.get("predict_config") or {}).get("batch_size")
    if isinstance(batch, int):
        properties["mlm:batch_size_suggestion"] = batch
    created = _created(bundle.created)
    item = pystac.Item(
        id=f"{slug(spec.arch)}-{bundle.content_hash.split(':')[-1][:12]}",
        geometry=geometry,
        bbox=bbox,
        datetime=created,
        properties=properties,
        stac_extensions=[EXTENSIONS["mlm"], EXTENSIONS["raster-v1"]],
    )
    item.add_asset(
        "weights",
        pystac.Asset(
            href=relative_href(absolute_url(url), item_url),
            title="w2w model bundle: weights and metadata (safetensors)",
            media_type=SAFETENSORS_MEDIA_TYPE,
            roles=["mlm:model", "mlm:weights", "data"],
            extra_fields={
                "mlm:artifact_type": "safetensors",
                "raster:bands": [{"name": b} for b in bundle.bands],
            },
        ),
    )
    item.set_self_href(absolute_url(item_url))
    return item.to_dict(include_self_link=True, transform_hrefs=False)


def _input(bundle: Any) -> dict[str, Any]:
    """The MLM input object: bands, chip shape and the normaliser as value scaling."""
    norm = bundle.normalizer
    if norm.method == "zscore":
        scaling = [
            {"type": "z-score", "mean": float(m), "stddev": float(s)}
            for m, s in zip(norm.offset, norm.scale, strict=True)
        ]
        how = "z-score per band"
    else:
        scaling = [
            {"type": "min-max", "minimum": float(lo), "maximum": float(hi)}
            for lo, hi in zip(norm.lo, norm.hi, strict=True)
        ]
        how = "each band clipped to its 2nd-98th percentile range, scaled to [0, 1]"
    return {
        "name": "imagery",
        "bands": list(bundle.bands),
        "input": {
            "shape": [-1, len(bundle.bands), bundle.chip_size, bundle.chip_size],
            "dim_order": ["batch", "channel", "height", "width"],
            "data_type": "float32",
        },
        "value_scaling": scaling,
        "description": f"Imagery chips, {how}; invalid pixels (nodata, NaN) set to 0.",
    }


def _output(bundle: Any) -> dict[str, Any]:
    """The MLM output object: class scores per pixel, channel i = the bundle's i-th class."""
    from w2w.export.stac import slug

    return {
        "name": "class-scores",
        "tasks": ["semantic-segmentation"],
        "result": {
            "shape": [-1, len(bundle.classes), bundle.chip_size, bundle.chip_size],
            "dim_order": ["batch", "class", "height", "width"],
            "data_type": "float32",
        },
        "classification:classes": [
            {
                "value": channel,
                "name": slug(c.name),
                "description": f"{c.name} (value {c.id} in the map)",
                "color_hint": c.hex_color(),
            }
            for channel, c in enumerate(bundle.classes)
        ],
        "description": "Class scores (logits) per pixel; the map takes the argmax of the "
        "softmax blended over overlapping chips with a Hann window.",
    }


def _predict_provenance(provenance: dict[str, Any]) -> dict[str, Any]:
    """The record predict wrote (the one naming the bundle's hash), or an empty one."""
    return next((node for node in records(provenance) if "bundle_hash" in node), {})


def _created(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return dt.datetime.now(dt.UTC).replace(microsecond=0)
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
