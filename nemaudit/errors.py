"""Exceptions with messages a user can act on (they name the file, line, unit or value)."""


class NemauditError(Exception):
    """Base class for every error nemaudit raises on bad input."""


class ProbeFormatError(NemauditError):
    """A probing dataset on disk is malformed (names the file and, where known, the line)."""


class ModelSpecError(NemauditError):
    """A model spec, checkpoint or layer name is invalid."""


class CheckpointError(ModelSpecError):
    """A weights file cannot be read, is no state_dict, or does not fit the model: the
    ``weights`` setting's fault, whatever the file is called."""


class ActivationError(NemauditError):
    """Activations are unusable (NaN/inf), naming the units and images involved."""


class NemauditWarning(UserWarning):
    """A verdict to look at: a property that holds at its point estimate but not at its
    confidence bound (``flip_rate <= 0.05 @ 95%``)."""


class SpecError(NemauditError):
    """A property, corruption or CLI spec is malformed (names the field and what is allowed)."""


class NormalizeSpecError(ModelSpecError, SpecError):
    """A normalisation spec is malformed: a model setting written as a spec, so handlers of
    either kind catch it."""
