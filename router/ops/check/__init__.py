"""`goproxy-router check`: can this edge reach every upstream and checksum database?

For each upstream and each checksum database URL (the database and each of
its mirrors) the check resolves the host, connects, does the TLS handshake
and fetches one cheap path, timing each phase on its own, then prints one
row per target with a plain-language diagnosis: "ok", "DNS failure: ...",
"connection refused", "TLS error: ...", "timeout after 5.0s while
connecting", "HTTP 503 from upstream", ...

Why raw asyncio streams and not aiohttp: aiohttp's trace hooks time DNS
separately, but report TCP connect and TLS handshake as one
``connection_create`` span, which is exactly the split an operator needs
("the firewall drops us" vs "a middlebox breaks TLS"). So each phase here is
its own step, done the way the router's aiohttp client does it, so the
numbers and the verdicts describe what `serve` will see:

- DNS: ``getaddrinfo(host, port, SOCK_STREAM, AI_ADDRCONFIG)`` (aiohttp's
  threaded resolver does the same call). It runs in a daemon thread rather
  than the loop's executor: a resolver that hangs must not keep the command
  from exiting once the timeout has been reported. An IP-literal host is not
  looked up (``dns_ms`` is null, "n/a" in the table).
- TCP connect: ``aiohappyeyeballs.start_connection`` over the resolved
  addresses with a 0.25 s happy-eyeballs delay, as aiohttp connects.
- TLS (https only): ``StreamWriter.start_tls`` on the connected socket with
  ``ssl.create_default_context()`` (the system trust store, aiohttp's
  default) and the URL's host as ``server_hostname``.
- HTTP: one ``GET`` with ``Connection: close``; ``first_byte_ms`` is the time
  from the request being written to the first byte of the response.

What is fetched, and what counts as working:

- An upstream: ``<url><probe_path>`` (``probe_path`` defaults to ``/``, the
  same path the active probes use), sent with the upstream's credentials
  (its ``headers``, and the ``user:password@`` of its URL as Basic auth),
  built by ``UpstreamTarget.for_url`` exactly as `serve` and the probes
  build them, and only to it. A private registry has no known public
  module, so a fixed module path would prove nothing; as for the active
  probes, any answer below 500 means "it is there and speaks HTTP", and the
  status is reported. Two exceptions, stricter than the probes because this
  is a diagnosis tool: 401, 403 and 407 fail ("credentials missing or
  rejected"): the router sends the same headers on every request, so it
  would get the same refusal for real downloads. 5xx fails.
- A checksum database URL: ``<url>/latest``. It must answer 200 with a
  signed tree head: a note whose text starts with ``go.sum database tree``
  (or with the database's name line, as newer checkpoint formats do) and
  that carries a signature line (``— name sig``). A 200 HTML page from a
  captive portal or a wrong URL is not a checksum database.

Fast enough for its routes: an upstream that answers, but later than a
route using it would wait, is not working for that route ("slow: first byte
after 4.0 s, route corp allows 1 s (timeouts.headers)"), and likewise a
connect slower than the route's ``timeouts.connect``. The time compared with
``timeouts.headers`` runs from the start (DNS included) to the first byte of
the answer, as `serve` counts it (``until_first_byte_ms``). Checksum database
URLs are held to the top-level timeouts, which the sumdb proxy uses.

How long each target is given: by default exactly as long as `serve` would
wait for it, the longest ``timeouts.connect`` to connect and the longest
``timeouts.headers`` in all, among the routes that use it; waiting longer
could not change any verdict. ``--timeout`` replaces that with one bound for
all phases: a longer one shows how slow a too-slow upstream really is, a
shorter one is quicker but may fail an upstream `serve` would still wait for
(the output notes which routes allow more). All targets are checked
concurrently, so the command takes about one bound at most.

Exit status (`run`): 0 when every route has at least one working upstream,
1 otherwise (the output names each such route), 2 is left to the CLI for
config errors. A checksum database with no working URL is reported as a
warning but does not change the exit status: the contract is about routes.

Secrets: credentials are sent to their own upstream only, and every printed
string (URL, diagnosis, summary) goes through `goproxy_router.config.secrets.redact` with
every secret of the config first.

Modules: `targets` (what is checked, a result row, the route verdicts; no
I/O), `probe` (one target's phases, timed and judged, and `check_all`), `wire`
(the low-level steps: the resolver thread, reading an answer, plain-language
DNS, TLS and OS reasons), `report` (the table, the JSON, the summary and the
command's exit status).
"""
