"""Which route a module belongs to and who may use it: the route table, access
policies (networks or token, the failed-authentication throttle, the admin surface),
and who the client is and where (X-Forwarded-For, GeoIP).

Must not import scoring, storage, forwarding, serving, ops or runtime.
"""
