"""What a stream is, as pure rules both processes use.

Imports only the standard library, `streamalchemy.errors` and `core` itself: no I/O
of the daemon's, nothing of the CLI's.
"""
