"""The operator surface: Prometheus metrics, the status page, health and explain
endpoints, and the `check` command's diagnosis of each upstream.

Must not import runtime.
"""
