"""Talking to one upstream: who a request goes to and with which credentials, the
shared client session and its timeouts, the edge's own connection pool, bodies
decoded within a limit, where redirects may lead, live statistics (latency, breaker)
and active probes.

Must not import routing, scoring, storage, forwarding, serving, ops or runtime.
"""
