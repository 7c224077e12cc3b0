"""The optional PLAID-style search structure of an index (``tokembed compress``, ``encode --nbits``).

    codec.py     centroids (faiss k-means), residual buckets, token <-> (centroid id, packed residual)
    codes.py     per-shard code files: codes row for row with a shard, plus its inverted lists
    files.py     safetensors written atomically, read memory-mapped
    build.py     train or keep the codec, code new shards, carry unchanged rows, cleanup
    retrain.py   drift, and when the centroids are trained again (or kept: no vectors, no faiss)
    compress.py  ``compress_index`` (locked, atomic, resumable)
    drop.py      ``--drop-vectors``: shards rewritten without vectors, code files linked to them
    coded.py     ``encode`` and the structure; re-runs on a compressed-only index (rows coded as written)
    candidates.py  candidates from the probed lists, ranked by approximate scores
    search.py    open the structure, candidates, exact re-rank
"""

from tokembed.search.plaid.compress import CompressSummary, compress_index
from tokembed.search.plaid.search import DEFAULT_CANDIDATES, DEFAULT_PROBE, open_searchable, plaid_search

__all__ = ["DEFAULT_CANDIDATES", "DEFAULT_PROBE", "CompressSummary", "compress_index", "open_searchable", "plaid_search"]
