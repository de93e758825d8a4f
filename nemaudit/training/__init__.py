"""Trainers of the bundled models, reached through ``nemaudit train`` / ``nemaudit train-milan``.

- :mod:`.conceptnet`: the concept-world classifier (``conceptnet.pt``/``.json``);
- :mod:`.annotations`: MILAN's training descriptions, written from the concept world's
  ground truth;
- :mod:`.milan`: the offline MILAN captioner and language model (``milan.pt``/``.json``).

Nothing at audit time imports this package.
"""
