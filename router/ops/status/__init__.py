"""The operator's status page: `/_router/status` (HTML) and `/_router/status.json`.

Per route, each upstream's health, breaker state, peak-EWMA latency over the
last minutes (an inline SVG sparkline), request share (a bar) and error rate;
the cache's size and hit ratio; the retry budget. One self-contained page:
inline CSS, inline JS, inline SVG, no external asset, so it works offline and
from behind any firewall.

Three parts, each usable alone (and one module each, with the aiohttp
handlers in `handlers`):

- `StatusHistory` (`history`) samples the live stats every `interval` seconds into a
  bounded ring per upstream (120 x 5 s = 10 minutes), so the page can draw
  trends and compute shares and error rates over a window rather than since
  start-up. `sample()` can be called directly (tests pass fake times).
- `build_snapshot()` (`snapshot`) turns the live state into a `Snapshot` (TypedDicts of
  plain, JSON-ready numbers). It is the only place that reads `EdgeState`, and it is where secrets are
  kept out: upstream URLs lose their userinfo, and every string that can
  carry upstream text (`last_error`) is cut short and scrubbed of header
  values, tokens and credentials. Upstream `headers` are never read except
  to know which values to scrub.
- `render_status()` (`page`) turns a snapshot into HTML from the templates in
  `router/ops/status/templates/` (package data, read once at import: `page.html`,
  `fragments.html`, `style.css`, `app.js`). Values are substituted by
  `string.Template` in one function, `_render`, which `html.escape`s every
  value that is not a fragment it rendered itself, so a hostile upstream's
  error text renders as text.

How the page refreshes itself, and why this way: a small inline script
fetches the page's own URL every 5 s and swaps the freshly rendered
`<main id="status">` into the document. The alternatives were (a) fetching
`status.json` and rendering the tables in JavaScript, which would mean a
second renderer to keep in step with this one and a second place where
escaping must be right (one `innerHTML` with an unescaped upstream string
is an XSS), and (b) a plain `<meta http-equiv="refresh">`, which reloads
the whole page (flicker, scroll position lost) and, when the router stops
answering, replaces the last known picture with a browser error page at
exactly the moment the operator needs it. The swap keeps one renderer and
one escaping rule, keeps the scroll position, and on a failed fetch keeps
the last picture with a visible "not updating" warning. Without JS, a meta
refresh inside `<noscript>` reloads the page every 10 s. `status.json`
serves the same snapshot to scripts and dashboards.

The page sets a Content-Security-Policy that allows only its own script
(by hash) and connections to its own origin: even an escaping bug could not
run injected script or send data elsewhere.
"""
