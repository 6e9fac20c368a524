"""routes.yaml: the schema, loading with file:line errors, ${VAR} secrets and their
redaction, and what a valid file may still get wrong about security.

Must not import upstream, routing, scoring, storage, forwarding, serving, ops or runtime.
"""
