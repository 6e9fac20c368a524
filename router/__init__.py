"""goproxy-router: one GOPROXY URL for a global team, routed to the best upstream.

Installed as `goproxy_router` (the repository's router/ folder). Its packages, in the
order a request travels and from the bottom layer up (a package imports only the
ones before it; tests/test_layers.py checks):

    base        logs, private aiohttp details, file identity
    protocol    paths, patterns, go.mod, integrity of answers
    config      routes.yaml schema, loader, secrets
    upstream    client, statistics and breaker, probes
    routing     route table, access, client identity and GeoIP
    scoring     plugin API, engine, loader (built-in plugins: goproxy_router.plugins)
    storage     disk cache, writer, metadata, single flight
    forwarding  attempt schedule, forwarder, streaming, failure answers
    serving     request flow, cache serving, thin path, access log, /sumdb/
    ops         metrics, status page, health and explain, check
    runtime     the app, server and workers, command line

docs/ARCHITECTURE.md draws the request flow.
"""

__version__ = "0.1.0"
