"""Domain exceptions. Every message a user can cause names the file, column,
row or parameter involved and says how to fix it."""


class LabelPipelineError(Exception):
    """Base class for errors the user can act on."""


class InputDataError(LabelPipelineError):
    """The input file or its contents cannot be used as given."""


class ConfigError(LabelPipelineError):
    """A configuration value is invalid or inconsistent."""


class ModelNotFoundError(LabelPipelineError):
    """A model reference could not be resolved to a local directory."""


class ResourceMissingError(LabelPipelineError):
    """An offline resource (NLTK data, translation model, ...) is not available."""


class EmptyPoolError(LabelPipelineError):
    """A stage needs rows (unlabeled pool, training slice) and got none."""


class TrainingDivergedError(LabelPipelineError):
    """A method's training did not converge (NaN/inf loss or probabilities)."""
