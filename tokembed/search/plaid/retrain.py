"""When a search structure's centroids are trained again, and what a run keeps instead.

Drift: the manifest records the share of the index's tokens coded since training and the mean residual
norm at training and since. Past ``RETRAIN_SHARE`` or ``RETRAIN_NORM_RATIO`` (or with ``--retrain``) the
centroids are trained again from the current index (where faiss is missing, drift alone only logs that they
are due: ``encode`` refuses, before encoding, a run that must train). The norm ratio counts only when the
training sample was at most half the index (on a tiny index k-means saw every token and its residuals are optimistic).

A compressed-only index keeps its centroids (k-means needs the vectors it no longer has): a retrain asked for is
refused, one drift alone calls for is logged; so is one drift calls for where faiss is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokembed.errors import VectorsDroppedError
from tokembed.search.plaid.codes import CodingStats

RETRAIN_SHARE = 0.75  # tokens coded since training / tokens in the index
RETRAIN_NORM_RATIO = 1.25  # mean residual norm since training / at training


@dataclass(frozen=True)
class StructureOptions:
    nbits: int | None = None  # None: the index's current nbits (no structure if it has none)
    centroids: int | None = None  # None: colbert-ai's rule from the token count
    retrain: bool = False


def drift_only(old: dict, nbits: int, options: StructureOptions) -> bool:
    """Whether the retrain ``retrain_reason`` found is drift's (nobody asked for it)."""
    asked = options.retrain or nbits != old["nbits"] or options.centroids not in (None, *trained_counts(old))
    return not asked


def trained_counts(structure: dict) -> tuple[int, ...]:
    """Counts a ``--centroids`` keeps ``structure``'s centroids with: theirs, and k-means's (``codec.distinct_rows``)."""
    ran = (structure.get("training") or {}).get("kmeans_centroids")
    return (structure["centroids"],) if ran is None else (structure["centroids"], ran)


def keep_centroids_without_vectors(folder: Path, reason: str, drift_alone: bool, log) -> None:
    """A compressed-only generation keeps its centroids: k-means needs the vectors it no longer has. Raises
    ``VectorsDroppedError`` unless the retrain was drift's alone, which is only logged."""
    if not drift_alone:
        raise VectorsDroppedError(
            f"{folder}: {reason} needs new centroids, trained on the stored vectors, which `tokembed compress "
            "--drop-vectors` dropped from this index",
            hint="`tokembed encode CORPUS -o INDEX --full` re-encodes every row and can train new centroids",
        )
    log(f"{reason}: new centroids are due, but the vectors were dropped (compress --drop-vectors): keeping "
        "the current ones; `encode --full` re-encodes every row and trains new ones")


def refuse_unit_codes_without_vectors(folder: Path, vectorless: bool) -> None:
    """Codes of an earlier release decode every vector to unit length; a compressed-only index cannot be coded
    again with the lengths (its vectors are gone), and searching it scores pooled / un-normalized vectors wrong."""
    if vectorless:
        raise VectorsDroppedError(
            f"{folder}: its codes were written by an earlier release, which kept no vector lengths: this index's "
            "vectors are not unit length (--no-normalize or --pool-factor), so compressed-only scores are wrong, "
            "and its dropped vectors cannot be coded again",
            hint="`tokembed encode CORPUS -o INDEX --full` re-encodes every row and codes it anew",
        )


def same_encoding(committed: dict, manifest: dict) -> bool:
    """Whether the committed structure's vectors came from the same model weights and settings as this generation's."""
    from tokembed.models.resolve import weights_agree

    weights = [entry.get("model", {}).get("weights_sha256") for entry in (committed, manifest)]
    return weights_agree(*weights) and committed.get("settings_fingerprint") == manifest.get("settings_fingerprint")


def retrain_reason(old: dict, nbits: int, options: StructureOptions) -> str | None:
    if options.retrain:
        return "--retrain"
    if nbits != old["nbits"]:
        return f"--nbits {nbits} (the index has {old['nbits']})"
    if options.centroids is not None and options.centroids not in trained_counts(old):
        return f"--centroids {options.centroids} (the index has {old['centroids']})"
    drift = old["drift"]
    if drift["share_coded_since_training"] > RETRAIN_SHARE:
        return f"{drift['share_coded_since_training']:.0%} of the tokens were coded since training (> {RETRAIN_SHARE:.0%})"
    now, then = drift.get("residual_norm_since_training"), drift["residual_norm_at_training"]
    # the figure at training is fair only when k-means did not see most of the tokens it averages over
    unseen = old["training"]["sample_tokens"] * 2 <= old["training"]["index_tokens"]
    if unseen and now is not None and then and now / then > RETRAIN_NORM_RATIO:
        return f"mean residual norm {now:.4f} vs {then:.4f} at training (> x{RETRAIN_NORM_RATIO})"
    return None


def update_drift(drift: dict | None, training: dict, stats: CodingStats, tokens: int) -> dict:
    if drift is None:  # the training run: every token was coded with the new centroids
        norm = stats.residual_norm_sum / stats.coded_tokens if stats.coded_tokens else 0.0
        training["residual_norm"] = round(norm, 6)
        drift = {"tokens_coded_since_training": 0, "residual_norm_sum_since_training": 0.0, "residual_norm_at_training": round(norm, 6)}
    else:
        drift["tokens_coded_since_training"] += stats.coded_tokens
        drift["residual_norm_sum_since_training"] += stats.residual_norm_sum
    since = drift["tokens_coded_since_training"]
    drift["share_coded_since_training"] = round(since / tokens, 6) if tokens else 0.0
    drift["residual_norm_since_training"] = round(drift["residual_norm_sum_since_training"] / since, 6) if since else None
    return drift
