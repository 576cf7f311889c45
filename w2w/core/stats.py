"""Mergeable per-band statistics and class histograms, computed block by block.

Ingest computes statistics in many parallel tasks, each over the valid pixels of its own
block; the driver merges the partial results. Mean and variance merge exactly (Chan et al.'s
parallel update of count, mean and sum of squared deviations). Percentiles are exact for
integer data up to 16 bits (a full histogram of values) and estimated from a deterministic
sample for wider types and floats. Results are independent of the order in which blocks finish.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


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


#: Integer dtypes whose full value histogram is small enough to keep (exact percentiles).
_HIST_DTYPES = frozenset(np.dtype(t) for t in ("uint8", "int8", "uint16", "int16"))
#: Samples kept per band per block, and in total, for dtypes without an exact histogram.
_SAMPLE_PER_BLOCK = 4096
_SAMPLE_TOTAL = 1_000_000


@dataclass
class BandAccumulator:
    """Running statistics of one band; :meth:`add` a block's valid values, :meth:`merge` peers.

    Results do not depend on the order in which blocks are added or merged (parallel tasks
    finish in any order): each block's (count, mean, sum of squared deviations) is kept and
    combined with exactly rounded sums, histograms are integer counts, and the percentile
    sample keeps the values with the smallest hash keys (bottom-k sampling).
    """

    dtype: str
    parts: list[tuple[int, float, float]] = field(default_factory=list)
    min: float = float("inf")
    max: float = float("-inf")
    #: Counts of the values ``hist_lo``, ``hist_lo + 1``, ...: the histogram spans only the
    #: range of values seen, so a block's partial result stays as small as its data (a full
    #: 16-bit histogram of six bands would be 3 MiB, four times a 256 px block of them).
    hist: np.ndarray | None = None
    hist_lo: int = 0
    sample: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    sample_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))

    def __post_init__(self) -> None:
        if np.dtype(self.dtype) in _HIST_DTYPES and self.hist is None:
            self.hist = np.zeros(0, dtype=np.int64)

    @property
    def count(self) -> int:
        """Number of values seen."""
        return sum(n for n, _, _ in self.parts)

    def add(self, values: np.ndarray, seed: int = 0) -> None:
        """Add a 1-D array of valid values of this band (one block's worth)."""
        n = int(values.size)
        if n == 0:
            return
        if self.hist is not None:
            # Integers: one count of each value, and the moments from the counts (a pass over
            # the block, not the four of converting it to float and summing).
            lo = int(values.min())
            if values.dtype.kind == "u":
                counts = np.bincount(values)[lo:]
            else:
                counts = np.bincount(values.astype(np.int64) - lo)
            x = np.arange(lo, lo + counts.size, dtype=np.float64)
            mean = float(counts @ x) / n
            self.parts.append((n, mean, float(counts @ (x - mean) ** 2)))
            self.min = min(self.min, float(lo))
            self.max = max(self.max, float(lo + counts.size - 1))
            self._count(counts, lo)
        else:
            v = values.astype(np.float64, copy=False)
            mean = float(v.mean())
            self.parts.append((n, mean, float(((v - mean) ** 2).sum())))
            self.min = min(self.min, float(v.min()))
            self.max = max(self.max, float(v.max()))
            keys = np.random.default_rng(seed).random(n)
            take = np.argsort(keys)[:_SAMPLE_PER_BLOCK]
            self._keep(v[take], keys[take])

    def _count(self, counts: np.ndarray, lo: int) -> None:
        """Add the counts of the values ``lo``, ``lo + 1``, ... to the histogram, widening its
        range where they fall outside it."""
        assert self.hist is not None
        if counts.size == 0:
            return
        if self.hist.size == 0:
            self.hist, self.hist_lo = counts.astype(np.int64, copy=True), lo
            return
        start = min(self.hist_lo, lo)
        end = max(self.hist_lo + self.hist.size, lo + counts.size)
        if start != self.hist_lo or end - start != self.hist.size:
            wider = np.zeros(end - start, dtype=np.int64)
            wider[self.hist_lo - start : self.hist_lo - start + self.hist.size] = self.hist
            self.hist, self.hist_lo = wider, start
        self.hist[lo - start : lo - start + counts.size] += counts

    def _keep(self, values: np.ndarray, keys: np.ndarray) -> None:
        self.sample = np.concatenate([self.sample, values])
        self.sample_keys = np.concatenate([self.sample_keys, keys])
        if self.sample.size > _SAMPLE_TOTAL:
            keep = np.argpartition(self.sample_keys, _SAMPLE_TOTAL)[:_SAMPLE_TOTAL]
            self.sample, self.sample_keys = self.sample[keep], self.sample_keys[keep]

    def merge(self, other: BandAccumulator) -> None:
        """Fold another accumulator of the same band into this one."""
        self.parts.extend(other.parts)
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        if self.hist is not None and other.hist is not None:
            self._count(other.hist, other.hist_lo)
        elif other.sample.size:
            self._keep(other.sample, other.sample_keys)

    def moments(self) -> tuple[int, float, float]:
        """(count, mean, population variance), combined exactly over the blocks."""
        n = self.count
        if n == 0:
            return 0, float("nan"), float("nan")
        mean = math.fsum(c * m for c, m, _ in self.parts) / n
        m2 = math.fsum(q for _, _, q in self.parts) + math.fsum(
            c * (m - mean) ** 2 for c, m, _ in self.parts
        )
        return n, mean, m2 / n

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100) of the values seen (exact with a histogram)."""
        if self.count == 0:
            return float("nan")
        if self.hist is not None:
            cdf = np.cumsum(self.hist)
            # "inverted CDF": smallest value whose cumulative count reaches q% of the total.
            rank = max(1, int(np.ceil(q / 100.0 * cdf[-1])))
            return float(np.searchsorted(cdf, rank) + self.hist_lo)
        return float(np.percentile(self.sample, q, method="inverted_cdf"))

    def result(self) -> BandStats:
        """The final statistics of this band."""
        n, mean, var = self.moments()
        return BandStats(
            mean=mean,
            std=float(np.sqrt(var)) if n else float("nan"),
            p2=self.percentile(2),
            p98=self.percentile(98),
            min=self.min if n else float("nan"),
            max=self.max if n else float("nan"),
            count=n,
        )


@dataclass
class SceneAccumulator:
    """Statistics of every band plus the class histogram of the labels."""

    band_names: list[str]
    dtype: str
    bands: list[BandAccumulator] = field(default_factory=list)
    class_counts: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))

    def __post_init__(self) -> None:
        if not self.bands:
            self.bands = [BandAccumulator(self.dtype) for _ in self.band_names]

    def add_block(
        self, image: np.ndarray, valid: np.ndarray, label: np.ndarray | None, seed: int
    ) -> None:
        """Add a (band, h, w) image block with its (h, w) valid mask and optional labels."""
        every = bool(valid.all())  # the usual block inside the state: no copy through the mask
        for b, acc in enumerate(self.bands):
            acc.add(image[b].ravel() if every else image[b][valid], seed=seed * 1009 + b)
        if label is not None:
            self.class_counts += np.bincount(label.ravel(), minlength=256)[:256]

    def merge(self, other: SceneAccumulator) -> None:
        """Fold another scene accumulator (another block's) into this one."""
        for mine, theirs in zip(self.bands, other.bands, strict=True):
            mine.merge(theirs)
        self.class_counts += other.class_counts

    @property
    def valid_count(self) -> int:
        """Number of valid pixels seen."""
        return self.bands[0].count if self.bands else 0

    def band_stats(self) -> dict[str, BandStats]:
        """Final statistics by band name."""
        return {name: acc.result() for name, acc in zip(self.band_names, self.bands, strict=True)}

    def histogram(self, unlabelled: int | None) -> dict[int, int]:
        """Pixel count per label value present, without the unlabelled value."""
        return {
            int(v): int(n) for v, n in enumerate(self.class_counts) if n > 0 and v != unlabelled
        }
