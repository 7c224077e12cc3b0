"""Search stage: exact MaxSim top-k over an index (``score``).

    queries (file or texts) -> query encoder (from the manifest) -> streaming block scan -> top-k hits

``queries.py`` reads query files, ``maxsim.py`` holds the scan (blocks, GEMM tiles, segmented max,
top-k), ``api.py`` the public functions re-exported here.
"""

from tokembed.search.api import Hit, encode_queries, load_document, search, search_vectors
from tokembed.search.maxsim import DEFAULT_BLOCK_TOKENS
from tokembed.search.queries import Queries, inline_queries, read_queries

__all__ = [
    "DEFAULT_BLOCK_TOKENS",
    "Hit",
    "Queries",
    "encode_queries",
    "inline_queries",
    "load_document",
    "read_queries",
    "search",
    "search_vectors",
]

