"""The CLI process: the fast path, commands, the connection to the daemon, the screen.

Never imports `server` or `supervision`; keeps its imports lean, since every command
pays for them.
"""
