"""goproxy-router: one GOPROXY URL for a global team, routed to the best upstream."""

__version__ = "0.1.0"
