"""A model bundle as a file a serving stack loads without w2w: TorchScript or ``torch.export``.

``w2w bundle-export model.safetensors --format pt2 -o model.pt2`` writes the network
(bands in, logits out, ``(N, bands, chip, chip)`` float32 normalised as the bundle says) and,
beside it, ``model.pt.json``: the bundle's metadata (bands in order, normalisation, chip
size, classes with their ids, names and colours, content hash), which a server needs to
prepare its input and name its output. Formats:

* ``pt2`` (the default): ``torch.export`` (the PyTorch 2 graph format, for AOTInductor and
  ExecuTorch), loaded with ``torch.export.load``; the batch dimension is dynamic;
* ``torchscript``: ``torch.jit.trace`` of the model, loaded with ``torch.jit.load`` (PyTorch
  deprecates TorchScript; for servers that still take it);
* ``onnx``: ``torch.onnx.export`` (needs the ``onnx`` and ``onnxscript`` packages; a
  one-line error says so when they are missing).

The two files are published as one set: a failure leaves the previous pair as it was.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from w2w.core import storage
from w2w.core.config import PathStr, StageConfig, overwrite_field
from w2w.core.errors import ConfigError, OutputError
from w2w.core.guard import OutputKind, Target
from w2w.core.outputs import publish_files
from w2w.model.bundle import load_bundle

Format = Literal["torchscript", "pt2", "onnx"]
FORMATS: tuple[str, ...] = ("torchscript", "pt2", "onnx")


class BundleExportConfig(StageConfig):
    """Settings of ``w2w bundle-export``: its bundle is an input and both files it writes
    are outputs, so the output guard (and the publish protocol) cover them as they cover
    every stage's."""

    stage_name: ClassVar[str] = "bundle-export"
    inputs: ClassVar[dict[str, str]] = {"bundle": "model bundle"}
    outputs: ClassVar[dict[str, OutputKind]] = {"output": "file"}

    bundle: PathStr = Field(description="a model bundle (.safetensors)")
    output: PathStr = Field(description="the model file to write")
    format: Format = Field(default="pt2", description="pt2, torchscript or onnx")
    overwrite: bool = overwrite_field("an existing model file and its metadata")

    @property
    def metadata(self) -> str:
        """Where the metadata file goes: beside the model, ``.json`` appended."""
        return self.output + ".json"

    def output_targets(self) -> list[Target]:
        """The model file and its metadata file."""
        return [
            Target("output model file", self.output, "file"),
            Target("metadata file", self.metadata, "file"),
        ]


def run(cfg: BundleExportConfig, *, progress: bool = True) -> ServedModel:
    """The ``bundle-export`` stage (run through :meth:`w2w.stages.Stage.execute`)."""
    return export_bundle(cfg.bundle, cfg.output, cfg.format, overwrite=cfg.overwrite)


@dataclass(frozen=True)
class ServedModel:
    """What ``bundle-export`` wrote: the model file, its metadata file and the format."""

    model: str
    metadata: str
    format: str


def export_bundle(
    bundle_url: str, output: str, fmt: str, *, overwrite: bool = False, batch: int = 2
) -> ServedModel:
    """Write the bundle's model as ``output`` in ``fmt``, with ``output + ".json"`` beside."""
    import torch

    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    output = storage.normalize(output)
    meta_url = output + ".json"
    if not overwrite and (storage.exists(output) or storage.exists(meta_url)):
        raise OutputError(f"{output} exists; pass --overwrite to replace it or choose another path")
    if storage.normalize(bundle_url) == output:
        raise OutputError(f"the output {output} is the bundle itself; choose another path")
    bundle = load_bundle(bundle_url)
    model = bundle.model("cpu")
    example = torch.zeros(batch, len(bundle.bands), bundle.chip_size, bundle.chip_size)
    with tempfile.TemporaryDirectory(prefix="w2w-serve-") as tmp:
        path = Path(tmp) / Path(output).name
        _write(model, example, path, fmt)
        meta = Path(tmp) / (path.name + ".json")
        document = {
            **bundle.metadata(),
            "content_hash": bundle.content_hash,
            "served_as": {
                "format": fmt,
                "input": "float32 (N, bands, chip, chip), normalised as 'normalization' says; "
                "invalid pixels 0",
                "output": "float32 (N, classes, chip, chip) logits; output k is classes[k]",
            },
        }
        meta.write_text(json.dumps(document, indent=2))
        publish_files([(output, path), (meta_url, meta)])
    return ServedModel(output, meta_url, fmt)


def _write(model: Any, example: Any, path: Path, fmt: str) -> None:
    import torch

    with torch.no_grad():
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(model, example), str(path))
        elif fmt == "pt2":
            batch = torch.export.Dim("batch", min=1, max=1024)
            program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
            torch.export.save(program, str(path))
        else:
            try:
                import onnx  # noqa: F401
                import onnxscript  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "ONNX export needs the onnx and onnxscript packages: pip install onnx "
                    "onnxscript (or use --format torchscript or pt2)"
                ) from None
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=["image"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
                # One self-contained file (a segmentation model is far below ONNX's 2 GB).
                external_data=False,
            )
