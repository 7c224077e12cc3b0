"""The PLAID codec: centroids, residual bucket cutoffs and weights, and the token <-> code mapping.

    vector x [D]  ->  centroid id c = argmax_c <x, C_c>       (uint16, K <= 65,536)
                      residual r = x - C_c  ->  per dimension the bucket of r_d among 2**nbits buckets,
                      packed nbits per dimension (first dimension in the high bits of a byte)
    code -> x~ = normalize(C_c + weights[bucket])              (the decompressed vector)

Centroids come from faiss k-means on a bounded sample of the index's vectors, then L2-normalized, as
colbert-ai's ``CollectionIndexer._train`` does; cutoffs are the residual values' quantiles
``1/B .. (B-1)/B`` and weights their quantiles ``(i + 0.5)/B`` over the whole sample (``ResidualCodec``);
tokembed starts there and refines them to the mean-squared-error optimum (``residual_buckets``).

Centroid assignment is *row-independent*: a token gets the same centroid whichever other tokens share its
matrix product. BLAS results depend on the shape of the product (measured: a row's float32 scores differ in
the last bits between a 1-row and a 100-row product), so a token whose best two float32 scores are closer
than ``TIE_MARGIN`` is decided again in float64 with a fixed-order sum over the close centroids only. That is
what makes an incremental run's codes byte-identical to coding a full rebuild. The best two scores come from
numpy's product, or, for many centroids and many tokens at once, from faiss's exhaustive inner-product search
where faiss is installed (it reduces each block of scores while it is in cache: 107-134 vs 171-173 us a token
against 65,536 centroids on 2 cores; not faster for fewer centroids or small calls); since
every token whose two best float32 scores could be in the wrong order is decided in float64, both give the
same ids (the float64 argmax, lowest id on a tie; tested).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from tokembed.errors import BadInputError, IndexCorruptError, UsageError
from tokembed.index.format import NBITS_CHOICES

MAX_CENTROIDS = 1 << 16  # ids fit uint16
TIE_MARGIN = 1e-3  # float32 dot products of unit vectors in <= 4096 dims err by far less than this
SCORE_ELEMENTS = 1 << 23  # [tokens, K] float32 scores per assignment step (32 MiB)
FAISS_ROWS = 1 << 15  # tokens per faiss search call (it blocks the scores itself; its output is [rows, 2])
# faiss was faster only for many centroids and large calls (measured, us a token, faiss vs numpy: 65,536 centroids
# 139-149 vs 184-192 from 4,000 rows, 230 vs 193 at 1,000; 16,384 centroids 39-49 vs 40-45; 4,096: 12-20 vs 11-13)
FAISS_MIN_CENTROIDS = 32_768
FAISS_MIN_ROWS = 4_096
KMEANS_ITERATIONS = 4  # colbert-ai's default too; 20 gave no better recall (README, "Search with the structure")
KMEANS_SEED = 123
SAMPLE_PER_CENTROID = 64
MAX_SAMPLE_TOKENS = 1 << 20  # 512 MiB of float32 at 128 dims: bounds the build's peak memory
MAX_RESIDUAL_VALUES = 1 << 22  # residual values the buckets are fitted on: those of every j-th sample token
LLOYD_ITERATIONS = 10_000  # each is a few binary searches: cheap; 16 levels converge slowly
KMEANS_EXTRA = "pip install 'tokembed[search]'"  # faiss-cpu: k-means


@dataclass(frozen=True)
class Codec:
    centroids: np.ndarray  # [K, D] float32, unit rows (to float16 precision when trained)
    cutoffs: np.ndarray  # [2**nbits - 1] float32
    weights: np.ndarray  # [2**nbits] float32
    nbits: int
    # codes keep each vector's length (float16) beside its direction: the index's vectors are not unit length
    # (``--no-normalize``, or ``--pool-factor``'s unnormalized means), so a decoded unit vector would score wrong
    vector_norms: bool = False

    @property
    def k(self) -> int:
        return len(self.centroids)

    @property
    def dim(self) -> int:
        return self.centroids.shape[1]

    @property
    def id_bits(self) -> int:
        """Bits a centroid id needs (code files pack ids this narrow when it is under 16)."""
        return max(1, (self.k - 1).bit_length())

    @cached_property
    def columns(self) -> np.ndarray:
        """[D, K] the centroids as contiguous columns: a query's product with them is ~1.5x faster (one
        query's few rows against 65,536 centroids streams the whole matrix, in the order BLAS reads it)."""
        return np.ascontiguousarray(self.centroids.T)

    @property
    def code_bytes(self) -> int:
        """Bytes of one token's packed residual."""
        return -(-self.dim * self.nbits // 8)

    # ------------------------------------------------------------------------------------ coding

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """[n, D] -> [n] uint16 centroid ids (the float64 argmax), independent of how tokens are grouped into calls."""
        out = np.empty(len(vectors), np.uint16)
        search = self._faiss if self.k >= max(2, FAISS_MIN_CENTROIDS) and len(vectors) >= FAISS_MIN_ROWS else None
        step = FAISS_ROWS if search is not None else max(1, SCORE_ELEMENTS // self.k)
        for start in range(0, len(vectors), step):
            x = np.ascontiguousarray(vectors[start : start + step], np.float32)
            best, gap = self._best_two_faiss(search, x) if search is not None else self._best_two_numpy(x)
            close = np.flatnonzero(gap < TIE_MARGIN)
            if len(close):
                best[close] = self._decide_in_float64(x[close])
            out[start : start + step] = best
        return out

    @cached_property
    def _faiss(self):
        """faiss's exhaustive inner-product index over the centroids; None without faiss (numpy then)."""
        try:
            import faiss
        except ImportError:
            return None
        index = faiss.IndexFlatIP(self.dim)
        index.add(np.ascontiguousarray(self.centroids, np.float32))
        return index

    def _best_two_faiss(self, index, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = index.search(x, 2)
        best, gap = ids[:, 0].astype(np.int64), scores[:, 0] - scores[:, 1]
        unfound = np.flatnonzero(best < 0)  # faiss finds nothing for a vector with a NaN: numpy's answer, as before
        if len(unfound):
            best[unfound], gap[unfound] = self._best_two_numpy(x[unfound])
        return best, gap

    def _best_two_numpy(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = x @ self.centroids.T  # [n, K]
        best = scores.argmax(axis=1)
        rows = np.arange(len(x))
        top = scores[rows, best]
        scores[rows, best] = -np.inf
        return best, top - scores.max(axis=1)  # one centroid: inf

    def _decide_in_float64(self, x: np.ndarray) -> np.ndarray:
        """Rare rows whose best two float32 scores are within the margin: the float64 argmax among the centroids
        within the margin of the best (a fixed-order sum; ties: the lowest id)."""
        best = np.empty(len(x), np.int64)
        step = max(1, SCORE_ELEMENTS // self.k)
        for start in range(0, len(x), step):
            scores = x[start : start + step] @ self.centroids.T
            for row, row_scores in enumerate(scores, start):
                near = np.flatnonzero(row_scores >= row_scores.max() - TIE_MARGIN)
                exact = (self.centroids[near].astype(np.float64) * x[row].astype(np.float64)).sum(axis=1)
                best[row] = near[int(np.argmax(exact))]
        return best

    def encode(self, vectors: np.ndarray, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """[n, D] -> (centroid ids [n] uint16, packed residuals [n, code_bytes] uint8, residual norms [n] float32)."""
        x = np.asarray(vectors, np.float32)
        ids = self.assign(x) if ids is None else ids
        residuals = x - self.centroids[ids]
        buckets = np.searchsorted(self.cutoffs, residuals, side="right").astype(np.uint8)
        return ids, pack(buckets, self.nbits), np.linalg.norm(residuals, axis=1).astype(np.float32)

    def decode(self, ids: np.ndarray, packed: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Codes -> decompressed unit vectors [n, D] float32 (into ``out`` if given)."""
        x, norms = self.decode_unscaled(ids, packed, out)
        x /= norms[:, None]
        return x

    def decode_unscaled(self, ids: np.ndarray, packed: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(centroid + residual [n, D] float32, into ``out`` if given; each row's norm, at least 1e-12): ``decode``
        before its division. A re-rank divides its [query tokens, n] scores instead, ~10x fewer values."""
        if len(ids) and int(ids.max()) >= self.k:  # checked, so that the takes below may clip (2.5x faster into ``out``)
            raise IndexCorruptError(f"a code holds centroid id {int(ids.max())} where the codec has {self.k}: search with --exact")
        x = np.take(self.centroids, ids, axis=0, out=out, mode="clip")
        x += np.take(self._byte_weights, packed, axis=0, mode="clip").reshape(len(packed), -1)[:, : self.dim]  # every byte is a row
        return x, np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), np.float32(1e-12))

    @cached_property
    def _byte_weights(self) -> np.ndarray:
        """[256, 8 // nbits]: the weights of the dimensions one packed byte holds (one gather per byte)."""
        return self.weights[unpack(np.arange(256, dtype=np.uint8)[:, None], self.nbits, 8 // self.nbits)]

    # ------------------------------------------------------------------------------------ storage

    def tensors(self) -> dict[str, np.ndarray]:
        """Centroids as float16 where that is exact (``train`` rounds them so: half the codec's bytes, the
        same codes and scores), else float32; a one-byte ``vector_norms`` marks a codec whose codes keep lengths."""
        half = self.centroids.astype(np.float16)
        centroids = half if np.array_equal(half.astype(np.float32), self.centroids) else self.centroids
        marker = {"vector_norms": np.ones(1, np.uint8)} if self.vector_norms else {}
        return {"centroids": centroids, "cutoffs": self.cutoffs, "weights": self.weights, **marker}

    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        return save(self.tensors(), metadata=self.metadata())

    def metadata(self) -> dict[str, str]:
        # one key only: safetensors writes a metadata map in no fixed order, and the file's sha256 names the codes
        return {"nbits": str(self.nbits)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], metadata: dict) -> "Codec":
        return cls(
            np.ascontiguousarray(tensors["centroids"], np.float32),
            np.asarray(tensors["cutoffs"], np.float32),
            np.asarray(tensors["weights"], np.float32),
            int(metadata["nbits"]),
            "vector_norms" in tensors,
        )


def needs_vector_norms(manifest: dict) -> bool:
    """Whether an index's vectors may be of any length: un-normalized, or pooled means (never re-normalized)."""
    settings = manifest.get("settings") or {}
    return not settings.get("normalize", True) or settings.get("pool_factor", 1) > 1


def codec_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------- packing


def pack(buckets: np.ndarray, nbits: int) -> np.ndarray:
    """[n, D] values < 2**nbits -> [n, ceil(D * nbits / 8)] uint8, the first dimension in the high bits, each value
    a plain binary number (colbert-ai's ``binarize`` writes each value's bits in the reverse order: README)."""
    per_byte = 8 // nbits
    n, dim = buckets.shape
    width = -(-dim // per_byte) * per_byte
    if width != dim:
        buckets = np.pad(buckets, ((0, 0), (0, width - dim)))
    groups = buckets.reshape(n, width // per_byte, per_byte).astype(np.uint8)
    shifts = (nbits * np.arange(per_byte - 1, -1, -1)).astype(np.uint8)
    return np.bitwise_or.reduce(groups << shifts, axis=2).astype(np.uint8)


def unpack(packed: np.ndarray, nbits: int, dim: int) -> np.ndarray:
    per_byte = 8 // nbits
    shifts = (nbits * np.arange(per_byte - 1, -1, -1)).astype(np.uint8)
    values = (packed[:, :, None] >> shifts) & np.uint8((1 << nbits) - 1)
    return values.reshape(len(packed), -1)[:, :dim]


# ---------------------------------------------------------------------------------------------- training


def checked_nbits(nbits) -> int:
    """``nbits`` as a Python int (the manifest records it: JSON takes no numpy integer). A bool or float is refused,
    not taken for 1 (True == 1) or 2 (2.0 == 2): the codec shifts by it."""
    if isinstance(nbits, bool) or not isinstance(nbits, (int, np.integer)) or nbits not in NBITS_CHOICES:
        raise UsageError(f"--nbits {nbits!r}: must be one of {', '.join(map(str, NBITS_CHOICES))}")
    return int(nbits)


def default_centroids(tokens: int) -> int:
    """colbert-ai's rule, 2**floor(log2(16 * sqrt(tokens))), capped at 65,536 and at the token count."""
    k = 1 << int(np.floor(np.log2(16 * np.sqrt(max(tokens, 1)))))
    k = min(k, MAX_CENTROIDS)
    while k > tokens and k > 1:
        k //= 2
    return k


def checked_centroids(requested) -> int:
    """``requested`` as a Python int between 1 and the cap; a bool, float or string is refused by name (as for
    ``nbits``), not taken for a count or left to fail in k-means after the index was read."""
    whole = not isinstance(requested, bool) and isinstance(requested, (int, np.integer))
    if not whole or not 1 <= requested <= MAX_CENTROIDS:
        raise UsageError(f"--centroids {requested!r}: must be a whole number between 1 and {MAX_CENTROIDS}")
    return int(requested)


def resolve_centroids(requested: int | None, tokens: int, where: str) -> int:
    if tokens < 1:
        raise BadInputError(f"{where}: the index holds no tokens, nothing to train centroids on")
    if requested is None:
        return default_centroids(tokens)
    requested = checked_centroids(requested)
    if requested > tokens:
        raise UsageError(f"--centroids {requested}: the index at {where} holds only {tokens} tokens (at least one per centroid)")
    return requested


def sample_size(k: int, tokens: int) -> int:
    return int(min(tokens, max(k, min(SAMPLE_PER_CENTROID * k, MAX_SAMPLE_TOKENS))))


def kmeans_installed() -> bool:
    """Whether faiss, which ``train`` runs k-means with, can be imported (the ``[search]`` extra)."""
    import importlib

    try:
        importlib.import_module("faiss")
    except ImportError:
        return False
    return True


def require_kmeans(what: str) -> None:
    """A ``UsageError`` (exit 2) where faiss is missing and ``what`` (a run's reason to train centroids) needs it."""
    if not kmeans_installed():
        raise UsageError(f"{what}: training centroids needs faiss for k-means, which is not installed", hint=KMEANS_EXTRA)


def train(sample: np.ndarray, k: int, nbits: int) -> Codec:
    """k-means (faiss) on ``sample`` [n, D] (its distinct centroids: at most ``k``), then the residual buckets from
    the same sample."""
    try:
        import faiss
    except ImportError:
        raise UsageError("the search structure needs faiss for k-means", hint=KMEANS_EXTRA) from None

    x = np.ascontiguousarray(sample, np.float32)
    kmeans = faiss.Kmeans(x.shape[1], k, niter=KMEANS_ITERATIONS, seed=KMEANS_SEED, verbose=False,
                          max_points_per_centroid=1 << 30, min_points_per_centroid=1)
    kmeans.train(x)
    centroids = kmeans.centroids.astype(np.float32)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    centroids = centroids.astype(np.float16).astype(np.float32)  # stored as float16 (tensors): half the codec's bytes
    centroids = distinct_rows(centroids)
    partial = Codec(centroids, np.zeros(0, np.float32), np.zeros(0, np.float32), nbits)
    held = x[:: -(-x.size // MAX_RESIDUAL_VALUES)]  # every j-th token: residuals of a subsample only (memory, time)
    cutoffs, weights = residual_buckets((held - centroids[partial.assign(held)]).reshape(-1), 1 << nbits)
    return Codec(centroids, cutoffs, weights, nbits)


def distinct_rows(centroids: np.ndarray) -> np.ndarray:
    """``centroids`` less exact repeats (the first of each kept, in order), so fewer than asked where k-means made
    some identical: on a sample that repeats vectors (duplicate documents) with about a centroid per distinct
    vector. Identical centroids score alike for every vector: ``assign`` codes all their tokens to the lowest, and
    the others only take probe slots with their empty lists."""
    _, first = np.unique(centroids, axis=0, return_index=True)
    return centroids if len(first) == len(centroids) else centroids[np.sort(first)]


def residual_buckets(values: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean-squared-error-optimal scalar quantizer of the residual values (Lloyd-Max): starting from
    colbert-ai's quantiles, each weight becomes the mean of its bucket's values and each cutoff the midpoint
    of its two weights, until nothing moves. Same format as colbert-ai's (``levels - 1`` cutoffs, ``levels``
    weights); measured on 2,800 real docstrings at nbits 2, decompressed-vector recall@10 0.895 -> 0.925."""
    ordered = np.sort(np.asarray(values, np.float64))
    sums = np.concatenate([[0.0], np.cumsum(ordered)])
    quantiles = np.arange(levels, dtype=np.float64) / levels
    weights = np.quantile(ordered, quantiles + 0.5 / levels)
    for _ in range(LLOYD_ITERATIONS):
        cutoffs = (weights[1:] + weights[:-1]) / 2
        bounds = np.concatenate([[0], np.searchsorted(ordered, cutoffs, side="right"), [len(ordered)]])
        counts = np.diff(bounds)
        means = np.divide(np.diff(sums[bounds]), counts, out=weights.copy(), where=counts > 0)
        moved, weights = np.abs(means - weights).max(), means
        if moved <= 1e-10:
            break
    return ((weights[1:] + weights[:-1]) / 2).astype(np.float32), weights.astype(np.float32)
