"""User-facing errors. Library code raises these with one-line, actionable messages; only the CLI catches them."""


class LenskitError(Exception):
    """Base class: the message is shown to the user as is, on one line."""


class InputError(LenskitError):
    """A prompt, option or file given by the user is not usable."""


class ModelError(LenskitError):
    """A model could not be found, loaded or matched to its weights."""


class AdapterError(LenskitError):
    """No adapter fits a model, or an adapter declaration is inconsistent."""


class TraceFileError(LenskitError):
    """A trace or export file is missing, corrupted or of another format version."""


class OutputError(LenskitError):
    """An output path cannot be written."""
