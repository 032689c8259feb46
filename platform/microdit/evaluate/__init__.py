"""Evaluation: FID with the standard Inception, CLIP score and sample grids.

One concept per module, imported explicitly (``from microdit.evaluate.fid import ...``) so
that using the maths does not pull in Ray or transformers:
- ``inception``: the packaged, sha256-checked FID Inception and a batched feature extractor;
- ``fid``: streaming ``FeatureStats``, ``frechet_distance``, ``fid_metric_name``;
- ``reference``: cached reference statistics of an image folder, captions index or array;
- ``distributed``: feature statistics over a Ray actor pool, streamed;
- ``sharded``: an evaluation split over the ranks of a training run, merged exactly;
- ``clip_score``: CLIP score when a CLIP model is configured, else None;
- ``grid``: sample grid PNGs.
"""
