"""Real imagery end to end (slow): Aberystwyth, Sentinel-2, 10 bands uint16, British grid."""

from __future__ import annotations

from pathlib import Path

import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from tests.conftest import ABER, TINY_MODEL
from w2w.pipeline import PipelineConfig, run_pipeline


@pytest.mark.slow
@pytest.mark.skipif(not ABER.exists(), reason="real imagery (../shared/data/real) absent")
def test_aberystwyth_ingest_to_evaluation(tmp_path: Path, ray_session: None) -> None:
    image = ABER / "sen2_20210527_aber_subset.tif"
    cfg = PipelineConfig.from_dict(
        {
            "workdir": str(tmp_path / "aber"),
            "ingest": {
                "images": [str(image)],
                "label": str(ABER / "aber_subset_labels.tif"),
                "classes": {1: "forest", 2: "grass", 3: "urban", 4: "water"},
                "chunk": 128,
                "block": 256,
            },
            "train": {
                "model": TINY_MODEL,
                "chips": {"size": 64, "stride": 32},
                "split": {"block_chips": 3, "seed": 2},
                "epochs": 8,
                "batch_size": 8,
                "workers": {"num_workers": 2},
            },
            "predict": {"block": 256},
            "export": {},
            "evaluate": {},
        }
    )
    result = run_pipeline(cfg, progress=False)
    cog = result.outputs["COG"]
    assert cog_validate(cog)[0]
    with rasterio.open(image) as src, rasterio.open(cog) as out:
        assert out.crs == src.crs and out.crs.to_epsg() == 27700
        assert out.transform == src.transform
        assert out.shape == src.shape == (339, 324)
    # Four classes; chance OA is under 0.5 (urban is 48% of the labels).
    assert result.metrics["test_oa"] > 0.6, result.metrics
    assert Path(result.outputs["evaluation report"]).read_text().count("|") > 20
