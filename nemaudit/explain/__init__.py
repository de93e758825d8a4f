"""The explanation methods, one folder each, on shared primitives (every folder but
``common/`` is a method; the audit registry, :data:`nemaudit.audit.methods.METHODS`, names them):

- :mod:`.common`: activations, the exact top-η quantile, masks (steps 1–2 of the pipeline);
- :mod:`.netdissect`: Network Dissection (concept labels by IoU);
- :mod:`.milan`: MILAN, offline (natural-language descriptions of exemplars).

``explain`` imports nothing from ``audit``, ``corrupt``, ``report``, the CLI or the plugin:
methods compute explanations; comparing them clean vs corrupted is :mod:`nemaudit.audit`'s job.
"""
