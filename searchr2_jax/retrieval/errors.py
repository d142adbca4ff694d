"""Exception types of the retrieval subsystem (re-exported by `retriever.py`)."""


class RetrievalError(RuntimeError):
    """A search that could not be answered (server down or slow after the retries, malformed reply, backend fault).
    The rollout catches this type to mark the affected rows and carry on."""


class CorpusError(ValueError):
    """A corpus file or record that cannot be read: the message names the file and line (or row) and the field."""


class IndexMismatchError(ValueError):
    """An index built with another encoder or corpus than the one it is being loaded with."""
