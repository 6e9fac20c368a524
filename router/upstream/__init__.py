"""Talking to one upstream: the shared client session and its timeouts, bodies
decoded within a limit, where redirects may lead, live statistics (latency, breaker)
and active probes.

Must not import routing, scoring, storage, forwarding, serving, ops or runtime.
"""
