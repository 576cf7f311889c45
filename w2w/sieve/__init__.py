"""Minimum mapping unit: merge patches smaller than N pixels into their largest neighbour.

``w2w sieve`` reads a mosaic store block by block and writes a new mosaic whose ``class`` is
*exactly* what :func:`rasterio.features.sieve` (GDAL's ``GDALSieveFilter``) gives for the
whole raster with ``mask=(class != 255)`` -- without ever holding the whole raster.

GDAL's rule, reproduced here
----------------------------
* A *patch* (GDAL: polygon) is a connected set of pixels of one class, 4- or 8-connected.
  Nodata (255) belongs to no patch: it is never changed, never counted, nobody's neighbour.
* A patch is *small* when it has fewer than N pixels over the whole raster (GDAL counts
  sizes in a C ``int`` that stops at 2**31 - 1; so do we).
* Every patch has a *largest neighbour*. Of neighbours of equal size, the one met first in
  GDAL's scan wins: pixels in row-major order, each compared with the pixel above, then
  (8-connectivity only) above-left and above-right, then left.
* A small patch follows largest neighbours until it reaches a patch of at least N pixels,
  and takes that patch's class. A small patch with no neighbour, or whose chain runs in a
  circle (patches of equal size that are each other's largest neighbour), keeps its class.

Why a halo is not enough
------------------------
A halo of N pixels holds every small patch that touches a block, but neither the true sizes
of its neighbours (a small patch between two large regions that both leave the window) nor
its whole chain: a row of one-pixel patches of alternating class, each pointing at the one
on its left, carries the class of a large patch at its far end across any number of blocks.
So the sizes and chains of patches that touch block edges are settled on the driver, and
everything else inside each block.

The passes
----------
1. *Label* (a task per block): label the block's patches; report those that touch the
   block's edge ("edge patches": class and pixels in the block), the block's four edge
   lines of labels, run-length coded, and the pairs of touching pixels step 3 needs inside
   the block: those of the small patches that touching joins to an edge patch small in the
   block (every chain step 3 follows stays among them), unless they are more than two per
   pixel of the block's edge lines.
2. *Join* (driver): join edge patches across block seams (connected components of a sparse
   graph) into global patches with their true sizes.
3. *Neighbours* (a task per block that touches a small edge patch, given the global patches
   of the one-pixel ring above, left and right of it): for each small edge patch, the best
   neighbour this block sees (size, scan position) and where that neighbour leads -- a
   patch inside the block is followed along its chain inside the block. From step 1's
   pairs and the pairs across the block's seams, which the edge lines give; a block whose
   pairs step 1 did not report (speckle) is read and labelled again.
4. *Resolve* (driver): the best neighbour of every small edge patch over all blocks, then
   the chains between edge patches (pointer doubling): the final class of every edge patch.
5. *Write* (a task per block): patches inside the block follow their chain up to a large
   patch or an edge patch, whose outcome comes from step 4; write ``class`` and
   ``confidence``, mark the block done.

Memory: a task holds a few arrays the size of its block, never more (measured peaks: about
16 bytes a pixel of the block for land-cover-like patches, 80 for pure speckle). The driver
holds a few integers per edge patch, per run of equal labels along block edges and per pair
step 1 reports (at most two per edge pixel): it grows with the length of the block edges
(edge pixels are 4 in 1024 of the raster's pixels in blocks of 1024 px; pure speckle costs a
few integers for each, real maps far less), never with the whole raster. Chains are not
bounded by any halo: an edge patch's chain may cross any number of blocks, and is followed
on the driver; an inner patch's chain is followed inside its block until it reaches a large
patch or an edge patch.

Confidence: where the sieve changes a pixel's class its confidence becomes 1
(``CONFIDENCE_SIEVED``: class set by the minimum mapping unit, probability unknown), never 0,
which is nodata; elsewhere confidence is copied.
"""

from typing import TYPE_CHECKING

from w2w.core.lazy import lazy_exports, make_callable

if TYPE_CHECKING:
    from w2w.sieve.config import SieveConfig
    from w2w.sieve.run import SieveReport, sieve

__all__ = ["SieveConfig", "SieveReport", "sieve"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "SieveConfig": ".config",
        "SieveReport": ".run",
        "sieve": "w2w.api",
    },
)

# ``w2w.sieve(cfg)`` runs the stage through the registry, as its command does (w2w.api).
make_callable(__name__, "w2w.api:sieve")
