"""The cache's storage: immutable artifacts on disk, written once with a temp file,
fsync and rename within a write budget; metadata in memory; single-flight fetches.
No aiohttp objects.

Must not import forwarding, serving, ops or runtime.
"""
