"""Steps 1–2 of the unified pipeline, shared by every explanation method (DESIGN.md):

- :mod:`.activations`: one streamed forward pass to a layer, batch by batch;
- :mod:`.quantile`: exact, mergeable top-η quantiles of each unit's raw activations;
- :mod:`.masks`: bilinear upsampling to the segmentation size and ``activation > T``.
"""
