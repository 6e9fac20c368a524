"""The foundation every layer may use: JSON logs, the private aiohttp details the
edge relies on (checked at start-up), and file identity for reload watchers.

Owns: base/logs.py, base/compat.py, base/fileid.py.
Must not import any other goproxy_router package.
"""
