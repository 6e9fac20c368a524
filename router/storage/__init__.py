"""The cache's storage: immutable artifacts on disk, written once with a temp file,
fsync and rename within a write budget; metadata in memory; single-flight fetches.
No aiohttp objects.

One concern per module: ``disk`` (DiskCache: lookups, memory tier, sweep),
``index`` (LRU index, leases, eviction), ``writer`` (CacheWriter), ``fileops``
(locked temp files, writev, fsync), ``budget`` (WriteBudget), ``health`` (free
space, write errors), ``layout`` (Go's download-cache paths), ``listing``
(``@v/list``), ``entry`` (CacheEntry, Lease, ETag), ``errors`` (CacheError
family), ``metadata`` (MetadataCache), ``singleflight`` (Coalescer), ``tasks``.

Must not import forwarding, serving, ops or runtime.
"""
