"""The Go module proxy protocol, pure: request paths and their escaping, module
path patterns (GOPRIVATE semantics), go.mod syntax, and whether an answer is a real
one for what was asked (integrity).

No I/O, no event loop, no configuration. Must not import any goproxy_router package
but base.
"""

# Plugins see ctx.kind as this: `from goproxy_router.protocol import Kind` (README).
from goproxy_router.protocol.requests import Kind

__all__ = ["Kind"]
