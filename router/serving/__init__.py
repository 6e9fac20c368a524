"""The GOPROXY request path inside the aiohttp app: the request flow (protocol →
route → cache → rank → forward), serving from the cache, the thin path for hot hits,
file sending, the access log, /sumdb/, and client-connection limits.

Must not import ops or runtime.
"""
