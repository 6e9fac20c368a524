"""Reloads fail closed: the watcher waits for routes.yaml to settle
before loading it, and a config that gives up a protection the running one has (an
`allow`, `sumdb: false`, the admin token, a wider network) is rejected unless forced
with SIGUSR1."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from goproxy_router.config.loader import load_config, parse_config
from goproxy_router.config.safety import weakenings
from goproxy_router.config.schema import Config
from goproxy_router.runtime.server import Reloader
from tests.conftest import RouterProcess
from tests.support import Module, ModuleTree, ThreadedFakeProxy
from tests.test_operations import parse_metrics, value

CORP = Module("corp.example/tool", "v1.0.0")
CORP_INFO = f"/{CORP.path}/@v/{CORP.version}.info"
ROUTE_TOKEN = "route-token-5d1e0a9c3b7f"
ADMIN_TOKEN = "admin-token-8e2b4c6a0d1f"
ENV = {"CORP_TOKENS": ROUTE_TOKEN, "ADMIN_TOKEN": ADMIN_TOKEN}

# The private route's `allow` is its last key, and `admin` comes after the routes:
# a copy cut before "    allow:" is a valid config with neither.
PROTECTED = """\
upstreams:
  corp: {{url: "{url}"}}
cache: {{dir: "{cache}"}}
probes: {{enabled: false}}
routes:
  - name: public
    match: ["example.com"]
    upstreams: [corp]
  - name: private
    match: ["corp.example"]
    upstreams: [corp]
    sumdb: false
    allow:
      tokens_env: CORP_TOKENS
admin:
  cidrs: []
  token_env: ADMIN_TOKEN
"""
UNGUARDED = PROTECTED.replace("    allow:\n      tokens_env: CORP_TOKENS\n", "")


def status(url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def rejected_reloads(router: RouterProcess) -> float | None:
    with urllib.request.urlopen(urllib.request.Request(
            router.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}),
            timeout=5) as response:
        samples = parse_metrics(response.read().decode())
    return value(samples, "goproxy_config_reloads_total", result="rejected")


def wait_for_log(router: RouterProcess, text: str, count: int = 1, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while router.stderr().count(text) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    log = router.stderr()
    assert log.count(text) >= count, f"no {text!r} in the log:\n{log[-3000:]}"
    return log


@pytest.fixture
def protected(router_process: Callable[..., RouterProcess],
              threaded_fake_proxy: Callable[..., ThreadedFakeProxy],
              tmp_path: Path) -> tuple[RouterProcess, Callable[[str], str]]:
    """A router (watching every 0.1 s) serving PROTECTED, and a formatter for its text."""
    corp = threaded_fake_proxy(ModuleTree([CORP]), name="corp")

    def text(template: str) -> str:
        return template.format(url=corp.url, cache=tmp_path / "cache")

    router = router_process(text(PROTECTED), env=ENV, extra_args=["--watch-interval", "0.1"])
    assert status(router.url + CORP_INFO) == 401
    assert status(router.url + CORP_INFO, ROUTE_TOKEN) == 200
    assert status(router.url + "/metrics") == 403
    return router, text


def test_a_half_written_routes_yaml_is_never_applied(
        protected: tuple[RouterProcess, Callable[[str], str]]) -> None:
    """The file is rewritten in place in two writes 0.6 s apart, the first cut before the
    private route's `allow:` (and the admin section after it), while requests poll: the
    private route asks for its token and /metrics for the admin's throughout, and the
    complete file is applied once it has settled."""
    router, text = protected
    complete = text(PROTECTED) + "# edited\n"
    cut = complete.index("    allow:")
    seen: list[tuple[int, int]] = []

    def poll(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            seen.append((status(router.url + CORP_INFO), status(router.url + "/metrics")))
            time.sleep(0.02)

    with open(router.config_path, "w") as file:      # truncates: the watcher sees a new file
        file.write(complete[:cut])
        file.flush()
        poll(0.6)
        file.write(complete[cut:])
    log = wait_for_log(router, '"event":"reloaded"')
    poll(0.3)
    assert len(seen) > 10 and set(seen) == {(401, 403)}, sorted(set(seen))
    assert '"reason":"file changed"' in log
    assert status(router.url + CORP_INFO, ROUTE_TOKEN) == 200     # the complete file serves


def test_a_weaker_config_is_rejected_until_forced(
        protected: tuple[RouterProcess, Callable[[str], str]]) -> None:
    """A complete, valid file without the private route's `allow`: the watcher rejects it
    with an ERROR naming the loss, and so does SIGHUP; each is counted as rejected and the
    old config keeps serving. SIGUSR1 applies it."""
    router, text = protected
    router.config_path.write_text(text(UNGUARDED))
    event = '"event":"reload rejected: the new config is weaker'
    log = wait_for_log(router, event)
    [line] = [line for line in log.splitlines() if event in line]
    assert '"level":"error"' in line, line
    assert "route 'private' pattern 'corp.example': allow removed" in line, line
    time.sleep(0.5)                                    # the watcher does not try it again
    assert router.stderr().count(event) == 1
    assert status(router.url + CORP_INFO) == 401
    assert rejected_reloads(router) == 1
    router.proc.send_signal(signal.SIGHUP)
    wait_for_log(router, event, count=2)
    assert status(router.url + CORP_INFO) == 401
    assert rejected_reloads(router) == 2
    router.proc.send_signal(signal.SIGUSR1)
    wait_for_log(router, '"event":"reloaded"')
    assert '"event":"reloaded a weaker config, as forced"' in router.stderr()
    assert status(router.url + CORP_INFO) == 200       # the operator asked for it


# -- in process ---------------------------------------------------------------------------

def route_config(name: str, allow: str = "") -> str:
    return ("upstreams: {a: {url: 'https://a.example'}}\n"
            f"routes:\n  - {{name: {name}, match: ['*'], upstreams: [a]{allow}}}\n")


async def test_the_watcher_loads_only_a_file_that_stayed_the_same(tmp_path: Path) -> None:
    """Rewritten every 50 ms for 0.6 s (each version valid), the file is loaded once, in
    its last version, after it has stayed unchanged for the settle time."""
    path = tmp_path / "routes.yaml"
    path.write_text(route_config("v0"))
    applied: list[str] = []

    async def apply(config: Config) -> None:
        applied.append(config.routes[0].name)

    reloader = Reloader(str(path), load_config, apply, settle=0.3)
    watcher = asyncio.ensure_future(reloader.watch(0.02))
    try:
        for version in range(1, 13):
            path.write_text(route_config(f"v{version}"))
            await asyncio.sleep(0.05)
        assert applied == []
        for _ in range(100):
            if applied:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
    finally:
        watcher.cancel()
    assert applied == ["v12"]


def weakened(old: str, new: str) -> list[str]:
    return weakenings(parse_config(old, env={}), parse_config(new, env={}))


PRIVATE = """\
upstreams: {a: {url: 'https://a.example'}}
routes:
  - name: corp
    match: ["git.corp.example"]
    upstreams: [a]
    sumdb: false
    allow: {cidrs: ["10.0.0.0/8"], tokens_env: T, require: all}
  - {name: public, match: ["*"], upstreams: [a]}
admin: {cidrs: ["10.1.0.0/16"], token_env: ADMIN}
geoip: {trusted_proxies: ["10.9.0.1/32"]}
"""


@pytest.mark.parametrize(("change", "loss"), [
    (("    allow: {cidrs: [\"10.0.0.0/8\"], tokens_env: T, require: all}\n", ""),
     "route 'corp' pattern 'git.corp.example': allow removed"),
    (("tokens_env: T, require: all", "require: all"),
     "route 'corp' pattern 'git.corp.example': allow.tokens_env removed (was T)"),
    (("require: all", "require: any"),
     "route 'corp' pattern 'git.corp.example': allow.require weakened from all to any"),
    (('cidrs: ["10.0.0.0/8"], tokens_env', 'cidrs: ["10.0.0.0/7"], tokens_env'),
     "route 'corp' pattern 'git.corp.example': allow.cidrs widened by 10.0.0.0/7"),
    (("    sumdb: false\n", ""),
     "route 'corp' pattern 'git.corp.example': sumdb: false removed"),
    (('match: ["git.corp.example"]', 'match: ["git.corp.example/tools"]'),
     "route 'corp' pattern 'git.corp.example' (now served by route 'public'): allow removed"),
    (("admin: {cidrs: [\"10.1.0.0/16\"], token_env: ADMIN}\n", ""),
     "admin.token_env removed (was ADMIN)"),
    (("admin: {cidrs: [\"10.1.0.0/16\"], token_env: ADMIN}\n", ""),
     "admin.cidrs widened by 127.0.0.0/8, ::1/128"),
    (('trusted_proxies: ["10.9.0.1/32"]', 'trusted_proxies: ["10.9.0.0/24"]'),
     "geoip.trusted_proxies widened by 10.9.0.0/24"),
])
def test_each_lost_protection_is_named(change: tuple[str, str], loss: str) -> None:
    old, new = change
    assert old in PRIVATE
    lost = weakened(PRIVATE, PRIVATE.replace(old, new))
    assert any(line.startswith(loss) for line in lost), lost


@pytest.mark.parametrize("change", [
    ('cidrs: ["10.0.0.0/8"], tokens_env', 'cidrs: ["10.2.0.0/16"], tokens_env'),   # narrower
    ('match: ["git.corp.example"]', 'match: ["git.corp.example", "corp.example"]'),
    ("  - {name: public", "  - {name: extra, match: [other.example], upstreams: [a]}\n"
                          "  - {name: public"),
    ("routes:\n  - name: corp", "routes:\n  - name: corp-renamed"),
    ('admin: {cidrs: ["10.1.0.0/16"]', 'admin: {cidrs: []'),
])
def test_a_stricter_or_equal_config_loses_nothing(change: tuple[str, str]) -> None:
    old, new = change
    assert old in PRIVATE
    assert weakened(PRIVATE, PRIVATE.replace(old, new)) == []


def test_adding_an_address_condition_to_a_token_route_is_not_weaker() -> None:
    tokens_only = PRIVATE.replace('cidrs: ["10.0.0.0/8"], ', "")
    assert weakened(tokens_only, PRIVATE) == []
    assert weakened(tokens_only, PRIVATE.replace("require: all", "require: any")) == [
        "route 'corp' pattern 'git.corp.example': allow.cidrs widened by 10.0.0.0/8"]
