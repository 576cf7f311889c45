"""The ingest stage: imagery and labels into a scene store on the state's grid.

:mod:`.config` (settings), :mod:`.sources` (opening and checking rasters), :mod:`.run`
(checks, plan, the block reader), :mod:`.build` (the store, block by block), :mod:`.synth`
(the synthetic state, as GeoTIFFs or straight into a store).
"""

from typing import TYPE_CHECKING

from w2w.core.lazy import lazy_exports, make_callable

if TYPE_CHECKING:
    from w2w.ingest.config import IngestConfig
    from w2w.ingest.run import IngestReport, ingest
    from w2w.ingest.synth import SynthConfig, SynthOutputs, synthesize

__all__ = ["IngestConfig", "IngestReport", "SynthConfig", "SynthOutputs", "ingest", "synthesize"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "IngestConfig": ".config",
        "IngestReport": ".run",
        "ingest": "w2w.api",
        "SynthConfig": ".synth",
        "SynthOutputs": ".synth",
        "synthesize": "w2w.api",
    },
)

# ``w2w.ingest(cfg)`` runs the stage through the registry, as its command does (w2w.api).
make_callable(__name__, "w2w.api:ingest")
