"""Getting an answer from the ranked upstreams: the attempt schedule (failover,
retries with backoff, hedging, deadline, retry budget), the forwarder that runs it,
streaming the winner to the client and the cache, and the answer when all fail.

Must not import serving, ops or runtime.
"""
