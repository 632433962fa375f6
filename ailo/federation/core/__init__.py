"""Federation's pure maths, shared by both sides: aggregation strategies, validation checks,
sketches, rewards, outer optimizers, update codecs, the update format and its signed digest.

No I/O and no knowledge of who runs it; `coordinator/` and `client/` build on this package."""
