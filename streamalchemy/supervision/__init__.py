"""The only code that spawns and signals children (FFmpeg, MediaMTX) and follows them.

Never imports `server` or `client`: it carries out what the daemon decided.
"""
