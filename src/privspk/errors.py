"""One exception hierarchy for privspk.

Every error the library raises on purpose derives from :class:`PrivspkError`,
so a caller can catch the whole family at once, or one branch of it. Messages
say what was wrong and, where there is one, what to do instead.

>>> try:
...     raise BudgetExceededError("client c0 would reach eps=9.1 > 8.0")
... except PrivspkError as exc:
...     print(type(exc).__name__, "-", exc)
BudgetExceededError - client c0 would reach eps=9.1 > 8.0
"""

from __future__ import annotations


class PrivspkError(Exception):
    """Root of every error privspk raises on purpose."""


class ConfigError(PrivspkError, ValueError):
    """A setting is missing, of the wrong type, or out of range."""


class AudioError(PrivspkError):
    """An audio file is missing, empty, truncated or unreadable.

    The message always names the file.

    >>> str(AudioError("clip.wav", "file is empty"))
    'clip.wav: file is empty'
    """

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class CorpusError(PrivspkError):
    """A corpus directory does not have the expected layout or content."""


class FeatureError(PrivspkError):
    """Feature extraction or the on-disk feature cache failed."""


class ModelError(PrivspkError):
    """An unknown model name, an incompatible checkpoint, or a model Opacus cannot train."""


class ProtocolError(PrivspkError):
    """A protocol message was malformed, unexpected, replayed or badly signed.

    ``client`` names the sender (when known) so the server can treat that
    client as dropped and carry on with the rest.

    >>> e = ProtocolError("payload truncated: 12 of 40 bytes", client="c3")
    >>> (e.client, str(e))
    ('c3', 'client c3: payload truncated: 12 of 40 bytes')
    """

    def __init__(self, reason: str, *, client: str | None = None) -> None:
        self.client = client
        self.reason = reason
        super().__init__(f"client {client}: {reason}" if client is not None else reason)


class AggregationError(PrivspkError):
    """A round cannot produce a sum (for example fewer survivors than the threshold).

    Nothing is opened when this is raised.
    """


class KeyLeakError(PrivspkError):
    """Secret key material was about to reach a party that must not hold it."""


class BudgetExceededError(PrivspkError):
    """A privacy spend would take a client (or speaker) past its budget."""


class LedgerError(PrivspkError):
    """The privacy ledger is corrupt, locked, from another run, or inconsistent."""


class CheckpointError(PrivspkError):
    """A checkpoint or run state file is missing, corrupt or incompatible."""


class InsufficientSpeechError(AudioError):
    """A recording holds too little speech (silence, noise, a tone, music, or too short) to enrol.

    >>> str(InsufficientSpeechError("hello.wav", "0.10 s of speech, need 0.5 s"))
    'hello.wav: 0.10 s of speech, need 0.5 s'
    """
