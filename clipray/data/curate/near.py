"""Near-duplicate images across a whole dataset: perceptual hashes, banding, union-find.

Each image gets a 64-bit perceptual hash (imagehash) and a colour grid (the mean colour of each
cell of a 4x4 grid over the image, 48 bytes). Two images are near duplicates when the hashes
differ in at most `data.near_threshold` bits (the candidate test) and no grid cell's colour differs
by more than `data.near_color_threshold` (0-255) in any channel (the verify step, run only on the
candidate pairs). Finding the candidates without comparing every row with every other (the LSH
banding trick; Leskovec, Rajaraman & Ullman, *Mining of Massive Datasets*, ch. 3.4):

- the 64-bit hash is cut into `bands` bands (8 x 8 bits by default); by the pigeonhole
  principle, two hashes within `bands - 1` bits agree exactly on at least one band, and most
  pairs within a larger threshold do too (the pairs missed are measured in the tests). Fewer,
  wider bands make smaller buckets (a bucket holds about n / 2^(64 / bands) rows of evenly
  spread hashes) and miss more pairs: 8 bands suit up to some 10^8 rows per run;
- the rows are grouped by (band index, band value) with Ray Data `groupby(...).map_groups`,
  a hash shuffle: a node holds the rows of the buckets it is given, never the whole dataset;
- inside a bucket, the pairs are tested by their full Hamming distances, and the pairs that pass
  are verified by their colour grids;
- the verified pairs (one per near-duplicate pair, so as many as there are duplicates, not rows)
  are resolved on the driver (`group_pairs`): rows in the order of the keep rule, the largest
  image (width x height) first, then the smallest key; a row near a kept row is dropped. The
  rule is deterministic: the same data gives the same kept rows whatever the order of the files.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from clipray.data.ops.base import Batch, DropStats, drop_where, op_registry

if TYPE_CHECKING:
    import ray.data
    from PIL import Image

HASH_COLUMN = "near_hash"
COLOR_COLUMN = "color_grid"
AREA_COLUMN = "image_area"
SIGNATURE_COLUMNS = (HASH_COLUMN, COLOR_COLUMN, AREA_COLUMN)
# The colour grid: mean RGB of each cell of a GRID x GRID grid over the trimmed image, compared
# by the largest difference of any cell and channel. It replaced imagehash's colour hash (a
# histogram of hue bins, binary coded, compared by Hamming distance): measured on openclipart with
# planted copies (docs/curation.md), at the same recall the grid let through 94 false pairs where
# the colour hash let through 239 (outside the generated star drawings): flags, cards and icons
# that differ in the colour of one area move a histogram little and one cell a lot.
GRID = 4
GRID_BYTES = GRID * GRID * 3
# The perceptual hash: imagehash's difference hash (dhash) of an 8x8 grey thumbnail (64 bits),
# taken after trimming the uniform border (the colour of the corners). Measured on openclipart
# with planted copies (docs/curation.md): on drawings over a plain page, an untrimmed hash
# describes mostly the page, and any two small drawings matched (the average hash merged a
# third of the distinct images at 6 bits); the DCT hash (phash) flips many bits on flat and
# symmetric drawings (a re-encode alone moved 17% of copies past 12 bits).
PERCEPTUAL_SIZE = 8
TRIM_TOLERANCE = 48  # a pixel differing from the corner colour by more than this is content


def _perceptual(img: Image.Image) -> Any:
    import imagehash

    return imagehash.dhash(img, PERCEPTUAL_SIZE)


def trim_border(img: Image.Image) -> Image.Image:
    """`img` cropped to the box of pixels that differ from its corners' (median) colour."""
    a = np.asarray(img, dtype=np.int16)
    if a.ndim != 3 or min(a.shape[:2]) < 4:
        return img
    corners = np.stack([a[0, 0], a[0, -1], a[-1, 0], a[-1, -1]])
    ys, xs = np.nonzero(np.abs(a - np.median(corners, axis=0)).max(axis=-1) > TRIM_TOLERANCE)
    if len(ys) <= 16:  # (almost) blank: hash the whole image
        return img
    return img.crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))


def _bits(h: Any) -> int:
    """An imagehash.ImageHash (up to 64 bits) as an int, first bit most significant."""
    flat = np.asarray(h.hash, dtype=bool).reshape(-1)
    return int.from_bytes(np.packbits(flat).tobytes(), "big") >> (8 * ((len(flat) + 7) // 8) - len(flat))


def color_grid(img: Image.Image) -> bytes:
    """The mean colour of each cell of a GRID x GRID grid over `img` (RGB), GRID_BYTES bytes."""
    from PIL import Image

    return np.asarray(img.resize((GRID, GRID), Image.Resampling.BOX), dtype=np.uint8).tobytes()


def signature(img: Image.Image) -> tuple[int, bytes]:
    """(perceptual hash, colour grid) of an RGB image."""
    small = img.copy()
    small.thumbnail((128, 128))  # the hash looks at 9x8 pixels: no need to convert more
    small = trim_border(small)
    return _bits(_perceptual(small)), color_grid(small)


BLANK_GRID = bytes(GRID_BYTES)


def grids(values: Iterable[Any]) -> np.ndarray:
    """A column of colour grids (bytes) as an (n, GRID_BYTES) int16 array (a missing one: zeros)."""
    raw = [bytes(v) if v is not None and len(v) == GRID_BYTES else BLANK_GRID for v in values]
    return np.frombuffer(b"".join(raw), dtype=np.uint8).reshape(len(raw), GRID_BYTES).astype(np.int16)


def signature_of_bytes(data: bytes) -> tuple[int, bytes, int]:
    """(perceptual hash, colour grid, area) of encoded image bytes."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        area = im.width * im.height
        im.draft("RGB", (128, 128))  # JPEG: decode at a reduced scale
        img = im.convert("RGB")
    return (*signature(img), area)


def popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x.astype(np.uint64)).astype(np.int64)


class NearHash:
    """Writes `near_hash` (uint64), `color_grid` (bytes) and `image_area` from the stored image bytes.

    It decodes the bytes itself (JPEG at a reduced DCT scale) rather than taking the `image` of
    the decode op, which is decoded for the model's input size: the signatures of the rows and
    of the evaluation images must come from the same function of the same bytes. A row whose
    bytes the hash cannot read has passed decode already; it gets the signature of a blank image.
    """

    writes = SIGNATURE_COLUMNS

    def __init__(self, image_column: str = "jpg") -> None:
        self.image_column = image_column
        self.reads = (image_column,)

    def __call__(self, batch: Batch, stats: DropStats) -> Batch:
        sigs = []
        for data in batch[self.image_column]:
            try:
                sigs.append(signature_of_bytes(bytes(data)))
            except Exception:
                sigs.append((0, BLANK_GRID, 0))
        batch = dict(batch)
        batch[HASH_COLUMN] = np.array([s[0] for s in sigs], dtype=np.uint64)
        batch[COLOR_COLUMN] = np.array([s[1] for s in sigs], dtype=object)
        batch[AREA_COLUMN] = np.array([s[2] for s in sigs], dtype=np.int64)
        return batch


@op_registry.register("near_hash")
def _near_hash(config: Any, *, train: bool) -> NearHash:
    return NearHash(config.data.image_column)


@dataclass(frozen=True)
class Thresholds:
    hash_bits: int = 10
    color_diff: int = 40

    def near_pairs(self, h1: np.ndarray, g1: np.ndarray, h2: np.ndarray, g2: np.ndarray) -> np.ndarray:
        """The near-duplicate test of aligned pairs: hashes (k,), colour grids (k, GRID_BYTES)."""
        close = popcount(np.asarray(h1, np.uint64) ^ np.asarray(h2, np.uint64)) <= self.hash_bits
        diff = np.abs(np.asarray(g1, np.int16) - np.asarray(g2, np.int16))
        return close & (diff.max(axis=-1, initial=0) <= self.color_diff)

    def near_matrix(self, h1: np.ndarray, g1: np.ndarray, h2: np.ndarray, g2: np.ndarray) -> np.ndarray:
        """(n, m): row i of the first set near row j of the second. The hashes are compared for
        every pair; the grids only for the pairs whose hashes are close (the verify step)."""
        h1, h2 = np.asarray(h1, np.uint64), np.asarray(h2, np.uint64)
        close = popcount(h1[:, None] ^ h2[None, :]) <= self.hash_bits
        i, j = np.nonzero(close)
        out = np.zeros(close.shape, dtype=bool)
        out[i, j] = self.near_pairs(h1[i], np.asarray(g1)[i], h2[j], np.asarray(g2)[j])
        return out


class EvalOverlap:
    """Drops `eval_overlap`: rows whose image near-duplicates any image of the evaluation sets.

    The evaluation signatures (a few thousand rows, 56 bytes each) are held by every actor and
    each batch is compared with all of them: n x m popcounts, cheap at evaluation-set sizes.
    """

    reads = SIGNATURE_COLUMNS
    writes = ()

    def __init__(self, eval_hashes: np.ndarray, eval_grids: np.ndarray, thresholds: Thresholds) -> None:
        self.hashes = np.asarray(eval_hashes, dtype=np.uint64)
        self.grids = np.asarray(eval_grids, dtype=np.int16).reshape(len(self.hashes), GRID_BYTES)
        self.thresholds = thresholds

    def __call__(self, batch: Batch, stats: DropStats) -> Batch:
        if not len(self.hashes) or not len(batch[HASH_COLUMN]):
            return batch
        h = np.asarray(batch[HASH_COLUMN], dtype=np.uint64)
        g = grids(batch[COLOR_COLUMN])
        hit = np.zeros(len(h), dtype=bool)
        for start in range(0, len(self.hashes), 4096):  # bounded n x 4096 matrices
            end = start + 4096
            hit |= self.thresholds.near_matrix(h, g, self.hashes[start:end], self.grids[start:end]).any(axis=1)
        return drop_where(batch, hit, "eval_overlap", stats)


# ---- the dataset-wide pass ------------------------------------------------------------------------

def explode_bands(batch: dict[str, np.ndarray], bands: int) -> dict[str, np.ndarray]:
    """One output row per (input row, band): `band`, `band_value` + the signature and key."""
    h = np.asarray(batch[HASH_COLUMN], dtype=np.uint64)
    width = 64 // bands
    mask = np.uint64((1 << width) - 1)
    values = np.stack([(h >> np.uint64(width * b)) & mask for b in range(bands)], axis=1)  # (n, bands)
    n = len(h)
    out: dict[str, np.ndarray] = {"band": np.repeat(np.arange(bands, dtype=np.int16)[None, :], n, axis=0).reshape(-1),
           "band_value": values.reshape(-1).astype(np.int64)}
    for name in ("key", HASH_COLUMN, COLOR_COLUMN, AREA_COLUMN):
        out[name] = np.repeat(np.asarray(batch[name]), bands)
    return out


def bucket_pairs(group: dict[str, np.ndarray], thresholds: Thresholds, bands: int) -> dict[str, np.ndarray]:
    """map_groups: the verified near pairs among the rows of one (band, band_value) bucket.

    A pair is emitted by the lowest band the two rows share, so each pair comes out once.
    """
    keys = np.asarray(group["key"]).astype(str)
    h = np.asarray(group[HASH_COLUMN], dtype=np.uint64)
    g = grids(group[COLOR_COLUMN])
    area = np.asarray(group[AREA_COLUMN], dtype=np.int64)
    band = int(group["band"][0]) if len(keys) else 0
    a_idx: list[np.ndarray] = []
    b_idx: list[np.ndarray] = []
    width = 64 // bands
    mask = np.uint64((1 << width) - 1)
    for start in range(0, len(keys), 2048):  # bounded 2048 x n blocks for large buckets
        rows = np.arange(start, min(start + 2048, len(keys)))
        x = h[rows, None] ^ h[None, :]
        near = popcount(x) <= thresholds.hash_bits
        near &= rows[:, None] < np.arange(len(keys))[None, :]
        # Shared lower band: that bucket emits the pair instead.
        for lower in range(band):
            near &= ((x >> np.uint64(width * lower)) & mask) != 0
        i, j = np.nonzero(near)
        i = rows[i]
        ok = thresholds.near_pairs(h[i], g[i], h[j], g[j])  # verify the candidates by colour
        a_idx.append(i[ok])
        b_idx.append(j[ok])
    ai = np.concatenate(a_idx) if a_idx else np.zeros(0, np.int64)
    bi = np.concatenate(b_idx) if b_idx else np.zeros(0, np.int64)
    out: dict[str, np.ndarray] = {"a": keys[ai].astype(object), "b": keys[bi].astype(object),
                                  "a_area": area[ai], "b_area": area[bi]}
    return out


@dataclass
class NearGroups:
    """Near-duplicate groups: `kept[key]` = the key kept for every dropped key."""

    kept: dict[str, str] = field(default_factory=dict)

    @property
    def dropped(self) -> set[str]:
        return set(self.kept)

    def groups(self) -> dict[str, list[str]]:
        """kept key -> dropped keys, largest groups first."""
        out: dict[str, list[str]] = {}
        for d, k in self.kept.items():
            out.setdefault(k, []).append(d)
        return dict(sorted(out.items(), key=lambda kv: (-len(kv[1]), kv[0])))


def group_pairs(pairs: Iterable[tuple[str, str, int, int]]) -> NearGroups:
    """Which rows to drop, from the near pairs (key_a, key_b, area_a, area_b).

    Rows are visited in the order of the keep rule (largest area first, then smallest key); a
    row near an already kept row is dropped (and recorded against the first such kept row), any
    other row is kept. Unlike connected components (union-find), this does not chain: when A~B
    and B~C but A and C are not near, C is not dropped for A's sake; on drawings of one family
    (a series of stars or flags) chaining had merged whole series. A group of copies that are
    all near one another keeps exactly one row.
    """
    neighbours: dict[str, set[str]] = {}
    area: dict[str, int] = {}
    for a, b, area_a, area_b in pairs:
        if a == b:
            continue
        for k, ar in ((a, area_a), (b, area_b)):
            area[k] = max(area.get(k, 0), int(ar))
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    order = sorted(neighbours, key=lambda k: (-area[k], k))
    rank = {k: i for i, k in enumerate(order)}
    kept_set: set[str] = set()
    kept: dict[str, str] = {}
    for k in order:
        leaders = [n for n in neighbours[k] if n in kept_set]
        if leaders:
            kept[k] = min(leaders, key=rank.__getitem__)
        else:
            kept_set.add(k)
    return NearGroups(kept)


def find_near_duplicates(signatures: ray.data.Dataset, thresholds: Thresholds, bands: int = 4,
                         num_partitions: int | None = None) -> NearGroups:
    """The near-duplicate groups of a dataset of (key, near_hash, color_grid, image_area) rows."""
    if 64 % bands:
        raise ValueError(f"bands must divide 64, got {bands}")
    exploded = signatures.map_batches(functools.partial(explode_bands, bands=bands), batch_format="numpy")
    pairs = exploded.groupby(["band", "band_value"], num_partitions=num_partitions).map_groups(
        functools.partial(bucket_pairs, thresholds=thresholds, bands=bands), batch_format="numpy")

    def rows() -> Iterable[tuple[str, str, int, int]]:
        for batch in pairs.iter_batches(batch_format="numpy", batch_size=4096):
            yield from zip(batch["a"].tolist(), batch["b"].tolist(), batch["a_area"].tolist(),
                           batch["b_area"].tolist())

    return group_pairs(rows())


def find_near_duplicates_local(keys: Sequence[str], hashes: np.ndarray, colors: Any, areas: np.ndarray,
                               thresholds: Thresholds, bands: int | None = None) -> NearGroups:
    """In-process reference (n^2; tests and small sets). `colors`: the colour grids (bytes or an
    (n, GRID_BYTES) array). `bands`: count only the pairs that share a band, as the banded pass
    does (its answer exactly); None: every near pair (all-pairs)."""
    h = np.asarray(hashes, dtype=np.uint64)
    g = colors if isinstance(colors, np.ndarray) and colors.ndim == 2 else grids(colors)
    pairs = []
    for i in range(len(keys)):
        near = thresholds.near_pairs(h[i], g[i], h[i + 1:], g[i + 1:])
        if bands is not None:
            width = 64 // bands
            mask = np.uint64((1 << width) - 1)
            x = h[i] ^ h[i + 1:]
            near &= np.any([((x >> np.uint64(width * b)) & mask) == 0 for b in range(bands)], axis=0)
        for j in (np.flatnonzero(near) + i + 1).tolist():
            pairs.append((str(keys[i]), str(keys[j]), int(areas[i]), int(areas[j])))
    return group_pairs(pairs)
