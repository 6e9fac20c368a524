"""The Go module proxy protocol, pure: request paths and their escaping, module
path patterns (GOPRIVATE semantics), go.mod syntax, and whether an answer is a real
one for what was asked (integrity).

No I/O, no event loop, no configuration. Must not import any goproxy_router package
but base.
"""
