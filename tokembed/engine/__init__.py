"""The encoding engine: sorted-length token-budget batches, run on a device, rows back in input order."""
