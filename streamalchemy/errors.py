"""The failures StreamAlchemy reports, each carrying the exit code of the contract.

The CLI is the only place that turns these into exit codes; the daemon turns them
into HTTP statuses (``http_status``) so that the code survives the socket.
"""


class StreamAlchemyError(Exception):
    """An error reported in one line, without a traceback."""

    exit_code = 1
    http_status = 500


class OperationFailed(StreamAlchemyError):
    """FFmpeg would not start, a source was unreadable, or the daemon failed."""


class InvalidInput(StreamAlchemyError):
    """Bad usage or an invalid value: a name, an option, a missing file."""

    exit_code = 2
    http_status = 400


class ConfigError(InvalidInput):
    """A malformed config.toml or an invalid environment variable."""


class StateFileError(StreamAlchemyError):
    """The state file could not be locked, read or written."""


class EncoderUnavailable(StreamAlchemyError):
    """The requested encoder does not exist on this machine or this FFmpeg."""


class DaemonUnreachable(StreamAlchemyError):
    """The daemon is not running and could not be started."""

    exit_code = 3
    http_status = 503


class StreamNotFound(StreamAlchemyError):
    exit_code = 4
    http_status = 404


class StreamExists(StreamAlchemyError):
    exit_code = 5
    http_status = 409


def error_for_status(status: int, message: str) -> StreamAlchemyError:
    """Rebuild on the client side the error the daemon answered with."""
    for cls in (InvalidInput, StreamNotFound, StreamExists, DaemonUnreachable):
        if cls.http_status == status:
            return cls(message)
    return OperationFailed(message)
