"""StreamAlchemy: FFmpeg streams that keep running, supervised by a daemon."""

__version__ = "0.1.0"
