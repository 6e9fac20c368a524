"""The scoring engine, its plugin loading, and the built-in plugins."""

from __future__ import annotations

import logging
import textwrap
import typing
from pathlib import Path
from typing import Any

import pytest

from goproxy_router.config.schema import Scoring, Upstream
from goproxy_router.protocol.requests import Kind
from goproxy_router.scoring import loader
from goproxy_router.scoring.api import (
    Candidate,
    NoOptions,
    Plugin,
    PluginError,
    PluginOptions,
    RequestContext,
)
from goproxy_router.scoring.engine import Engine, explain
from goproxy_router.scoring.loader import load_plugins
from goproxy_router.upstream.stats import StatsSettings, UpstreamStats
from goproxy_router.upstream.targets import UpstreamTarget


def candidate(name: str, rtt: float | None = None, *, countries: tuple[str, ...] = ("*",),
              weight: float = 1.0, priority: int = 0, in_flight: int = 0,
              settings: StatsSettings | None = None) -> Candidate:
    config = Upstream(url=f"http://{name}.example", countries=countries, weight=weight,
                      priority=priority)
    stats = UpstreamStats(name, config.url, settings or StatsSettings())
    if rtt is not None:
        stats.record_success(rtt, now=0.0)
    stats.in_flight = in_flight
    return Candidate(name, config, stats, UpstreamTarget.from_config(name, config))


def ctx(module: str | None = "example.com/m", country: str | None = None,
        continent: str | None = None, now: float = 1.0, kind: Kind = Kind.INFO) -> RequestContext:
    return RequestContext(route="public", module=module, kind=kind, country=country,
                          continent=continent, now=now)


BUILTINS = ["geo_affinity", "latency", "breaker", "weights"]


def names(ranking: Any) -> list[str]:
    return [s.name for s in ranking.order]


def test_latency_times_in_flight_decides() -> None:
    engine = Engine(load_plugins(BUILTINS))
    fast, slow = candidate("fast", 0.05), candidate("slow", 0.5)
    assert names(engine.rank(ctx(), [slow, fast])) == ["fast", "slow"]
    busy = candidate("busy", 0.05, in_flight=19)      # 0.05 x 20 = 1.0 > 0.5
    assert names(engine.rank(ctx(), [busy, slow])) == ["slow", "busy"]


def test_geo_affinity_same_country_then_continent_then_elsewhere() -> None:
    engine = Engine(load_plugins(BUILTINS))
    cn = candidate("cn", 0.1, countries=("CN",))
    jp = candidate("jp", 0.1, countries=("JP",))
    de = candidate("de", 0.1, countries=("DE",))
    ranking = engine.rank(ctx(country="CN", continent="AS"), [de, jp, cn])
    assert names(ranking) == ["cn", "jp", "de"]
    factors = {s.name: s.breakdown(ranking.plugins)["geo_affinity"] for s in ranking.order}
    assert factors == {"cn": 1.0, "jp": 1.5, "de": 3.0}


def test_unknown_country_is_neutral_and_star_sits_between_own_country_and_the_rest() -> None:
    engine = Engine(load_plugins(BUILTINS))
    star, de = candidate("star", 0.1), candidate("de", 0.1, countries=("DE",))
    ranking = engine.rank(ctx(country=None), [de, star])
    assert all(s.breakdown(ranking.plugins)["geo_affinity"] == 1.0 for s in ranking.order)
    assert names(ranking) == ["de", "star"]           # tie: config order
    ranking = engine.rank(ctx(country="BR", continent="SA"), [de, star])
    geo = {s.name: s.breakdown(ranking.plugins)["geo_affinity"] for s in ranking.order}
    assert geo == {"star": 1.2, "de": 3.0}
    assert names(ranking) == ["star", "de"]
    fr = candidate("fr", 0.1, countries=("FR",))
    ranking = engine.rank(ctx(country="DE", continent="EU"), [fr, star, de])
    assert names(ranking) == ["de", "star", "fr"]     # own country, '*', same continent


@pytest.mark.parametrize("country, continent", [("CN", "AS"), ("DE", "EU"), ("BR", "SA"), ("US", "NA")])
def test_star_listed_first_never_outranks_an_exact_country_match_at_equal_latency(
        country: str, continent: str) -> None:
    engine = Engine(load_plugins(BUILTINS))
    star = candidate("star", 0.2)
    local = candidate("local", 0.2, countries=(country,))
    ranking = engine.rank(ctx(country=country, continent=continent), [star, local])
    assert names(ranking) == ["local", "star"]
    why = {s.name: s.reasons(ctx(country=country), ranking.plugins)["geo_affinity"]
           for s in ranking.order}
    assert why["local"] == f"lists {country}, the client's country"
    assert why["star"].startswith("'*' (near everyone)")


def test_geo_affinity_refuses_options_that_put_star_before_the_clients_country() -> None:
    with pytest.raises(PluginError, match="same_country must be below anywhere"):
        load_plugins([{"geo_affinity": {"anywhere": 1.0}}])
    assert load_plugins([{"geo_affinity": {"anywhere": 2.0, "same_continent": 1.5}}])


def test_ties_are_broken_by_config_order_deterministically() -> None:
    engine = Engine(load_plugins(BUILTINS))
    ups = [candidate(n, 0.1) for n in "abcde"]
    for _ in range(5):
        assert names(engine.rank(ctx(), ups)) == list("abcde")


def test_weights_and_priority_tiers() -> None:
    engine = Engine(load_plugins(BUILTINS))
    heavy = candidate("heavy", 0.1, weight=4.0)
    light = candidate("light", 0.05)
    backup = candidate("backup", 0.001, priority=1)
    ranking = engine.rank(ctx(), [backup, light, heavy])
    assert names(ranking) == ["heavy", "light", "backup"]
    assert ranking.order[0].cost == pytest.approx(0.1 / 4)


def test_breaker_veto_and_panic_mode() -> None:
    engine = Engine(load_plugins(BUILTINS))
    settings = StatsSettings(failure_threshold=2)
    bad = candidate("bad", 0.01, settings=settings)
    good = candidate("good", 0.5)
    for _ in range(2):
        bad.stats.record_failure(0.01, "refused", now=0.5)
    ranking = engine.rank(ctx(now=1.0), [bad, good])
    assert names(ranking) == ["good"] and not ranking.panic
    assert ranking.vetoed[0].veto is not None and ranking.vetoed[0].veto.startswith("breaker: ejected")
    good.stats.record_failure(0.01, "x", now=0.5)
    good.stats.breaker.times_ejected = 0
    for _ in range(5):
        good.stats.record_failure(0.01, "x", now=0.5)
    ranking = engine.rank(ctx(now=1.0), [bad, good])
    assert ranking.panic and sorted(names(ranking)) == ["bad", "good"]


def test_half_open_lets_one_trial_through() -> None:
    engine = Engine(load_plugins(BUILTINS))
    settings = StatsSettings(failure_threshold=1, ejection=1.0, ejection_jitter=0.0)
    up = candidate("up", 0.1, settings=settings)
    other = candidate("other", 0.2)
    up.stats.record_failure(0.1, "x", now=0.0)
    assert names(engine.rank(ctx(now=0.5), [up, other])) == ["other"]
    assert "up" in names(engine.rank(ctx(now=1.5), [up, other]))
    up.stats.begin()
    assert names(engine.rank(ctx(now=1.5), [up, other])) == ["other"]


def test_pin_prefers_avoids_and_forbids() -> None:
    plugins = load_plugins([*BUILTINS, {"pin": {"rules": [
        {"match": ["golang.org/x/*"], "prefer": ["cn"]},
        {"match": ["github.com/bigcorp"], "forbid": ["io"], "avoid": ["cn"]},
    ]}}], upstream_names={"cn", "io", "google"})
    engine = Engine(plugins)
    google, cn, io = candidate("google", 0.05), candidate("cn", 0.2), candidate("io", 0.05)
    assert names(engine.rank(ctx("golang.org/x/mod"), [google, io, cn]))[0] == "cn"
    assert names(engine.rank(ctx("golang.org/y/z"), [google, io, cn]))[0] == "google"
    ranking = engine.rank(ctx("github.com/bigcorp/tool"), [google, io, cn])
    assert names(ranking) == ["google", "cn"]
    pin = ranking.vetoed[0].breakdown(ranking.plugins)["pin"]
    assert pin == "veto: pin rule github.com/bigcorp forbids it"


def test_pin_rejects_unknown_upstreams_at_their_place() -> None:
    with pytest.raises(PluginError, match=r"plugin 'pin': bad options: rules\[0\]\.avoid\[1\]: "
                                          r"unknown upstream 'nope' \(defined: a, b\)") as info:
        load_plugins(["latency", {"pin": {"rules": [{"match": ["x.example"], "avoid": ["a", "nope"]}]}}],
                     upstream_names={"a", "b"})
    [problem] = info.value.problems
    assert problem.loc == (1, "pin", "rules", 0, "avoid", 1)


@pytest.mark.parametrize("name", ["geo_affinity", "latency", "breaker", "weights", "pin"])
def test_every_builtin_refuses_an_unknown_option(name: str) -> None:
    options: dict[str, Any] = {"rules": []} if name == "pin" else {}
    with pytest.raises(PluginError) as info:
        load_plugins([{name: {**options, "bogus": 1}}], upstream_names={"a"})
    [problem] = info.value.problems
    assert problem.loc == (0, name, "bogus")
    assert problem.message.startswith(f"unknown option ({name} takes ")


def test_bad_options_and_unknown_plugins_stop_startup() -> None:
    with pytest.raises(PluginError, match=r"plugin 'geo_affinity': bad options: elsewhere"):
        load_plugins([{"geo_affinity": {"elsewhere": -1}}])
    with pytest.raises(PluginError, match=r"plugin 'latency': bad options: bogus: "
                                          r"unknown option \(latency takes no options\)"):
        load_plugins([{"latency": {"bogus": 1}}])
    with pytest.raises(PluginError, match="plugin 'nosuch' not found"):
        load_plugins(["nosuch"])
    with pytest.raises(PluginError, match="listed twice"):
        load_plugins(["latency", "latency"])


class Exploding(Plugin):
    name = "exploding"

    def score(self, ctx: RequestContext, upstream: Candidate) -> float:
        if upstream.name == "a":
            raise RuntimeError("boom")
        return 2.0


class Nonsense(Plugin):
    name = "nonsense"

    def score(self, ctx: RequestContext, upstream: Candidate) -> Any:
        return -3 if upstream.name == "a" else "cheap"


def test_plugin_raising_at_request_time_is_neutral_logged_and_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    engine = Engine([Exploding(NoOptions()), Nonsense(NoOptions())])
    with caplog.at_level(logging.ERROR, logger="router.scoring"):
        ranking = engine.rank(ctx(), [candidate("a"), candidate("b")])
    assert {s.name: s.breakdown(ranking.plugins) for s in ranking.order} == {
        "a": {"exploding": 1.0, "nonsense": 1.0}, "b": {"exploding": 2.0, "nonsense": 1.0}}
    assert engine.errors == {"exploding": 1, "nonsense": 2}
    assert len(caplog.records) == 3
    assert "RuntimeError: boom" in caplog.records[0].fields["problem"]  # type: ignore[attr-defined]


DIR_PLUGIN = textwrap.dedent('''\
    from pydantic import BaseModel
    from goproxy_router.scoring.api import Plugin, Veto

    class Options(BaseModel):
        avoid: str

    class AvoidOne(Plugin):
        name = "avoid_one"
        Options = Options

        def score(self, ctx, upstream):
            return Veto("avoided") if upstream.name == self.options.avoid else 1.0
    ''')


def test_plugin_from_a_directory(tmp_path: Path) -> None:
    (tmp_path / "avoid_one.py").write_text(DIR_PLUGIN)
    [plugin] = load_plugins([{"avoid_one": {"avoid": "a"}}], [str(tmp_path)])
    ranking = Engine([plugin]).rank(ctx(), [candidate("a"), candidate("b")])
    assert names(ranking) == ["b"]
    with pytest.raises(PluginError, match="plugin 'avoid_one': bad options: avoid: "
                                          "required key is missing"):
        load_plugins(["avoid_one"], [str(tmp_path)])


def test_every_plugin_problem_is_reported_with_its_place(tmp_path: Path) -> None:
    """A plain BaseModel ignores unknown keys; the loader still refuses a typo in one."""
    (tmp_path / "avoid_one.py").write_text(DIR_PLUGIN)
    with pytest.raises(PluginError) as info:
        load_plugins([{"avoid_one": {"avoid": "a", "avoidd": "b"}}, "nosuch",
                      {"weights": {"priority_step": 0}}, "avoid_one"], [str(tmp_path)])
    assert [(p.loc, p.message) for p in info.value.problems] == [
        ((0, "avoid_one", "avoidd"), "unknown option (avoid_one takes avoid)"),
        ((1,), "plugin 'nosuch' not found: not a built-in (goproxy_router.plugins), "
               "not in entry-point group "
               f"'goproxy_router.plugins', not in plugin_dirs {[str(tmp_path)]}"),
        ((2, "weights", "priority_step"), "Input should be greater than 1"),
        ((3,), "plugin 'avoid_one' is listed twice"),
    ]


WHOLE_OPTIONS_PLUGIN = textwrap.dedent('''\
    from pydantic import model_validator
    from goproxy_router.scoring.api import Plugin, PluginOptions

    class Options(PluginOptions):
        low: float = 1.0
        high: float = 2.0

        @model_validator(mode="after")
        def _ordered(self):
            if self.low > self.high:
                raise ValueError("low must not exceed high")
            return self

    class Band(Plugin):
        name = "band"
        Options = Options

    class NotAModel(Plugin):
        name = "not_a_model"
        Options = dict
    ''')


def test_problems_of_the_options_as_a_whole_are_reported_at_the_plugin(tmp_path: Path) -> None:
    (tmp_path / "band.py").write_text(WHOLE_OPTIONS_PLUGIN)
    (tmp_path / "not_a_model.py").write_text(WHOLE_OPTIONS_PLUGIN)
    with pytest.raises(PluginError) as info:
        load_plugins([{"band": {"low": 3}}, "not_a_model"], [str(tmp_path)])
    assert [(p.loc, p.message) for p in info.value.problems] == [
        ((0,), "plugin 'band': bad options: low must not exceed high"),
        ((1,), "plugin 'not_a_model': bad options: its Options is not a pydantic BaseModel subclass"),
    ]


UPSTREAM_PLUGIN = textwrap.dedent('''\
    from goproxy_router.scoring.api import Plugin, PluginOptions, UpstreamName

    class Options(PluginOptions):
        batch_upstream: UpstreamName

    class OfficeHours(Plugin):
        name = "office_hours"
        Options = Options
    ''')


def test_an_upstream_name_option_is_checked_when_the_upstreams_are_known(tmp_path: Path) -> None:
    (tmp_path / "office_hours.py").write_text(UPSTREAM_PLUGIN)
    spec = [{"office_hours": {"batch_upstream": "goproxy-io"}}]
    with pytest.raises(PluginError, match=r"batch_upstream: unknown upstream 'goproxy-io' "
                                          r"\(defined: a, b\)"):
        load_plugins(spec, [str(tmp_path)], upstream_names={"a", "b"})
    [plugin] = load_plugins(spec, [str(tmp_path)], upstream_names={"goproxy-io"})
    assert plugin.options.batch_upstream == "goproxy-io"  # type: ignore[attr-defined]


def test_broken_plugin_file_names_itself(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("raise ImportError('needs libfoo')\n")
    with pytest.raises(PluginError, match=r"plugin 'broken': .*broken.py failed to import: "
                                          r"ImportError: needs libfoo"):
        load_plugins(["broken"], [str(tmp_path)])
    (tmp_path / "empty.py").write_text("X = 1\n")
    with pytest.raises(PluginError, match="defines 0 Plugin subclasses named 'empty'"):
        load_plugins(["empty"], [str(tmp_path)])


def test_plugin_from_an_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real installed distribution (dist-info on sys.path) advertising the entry point."""
    (tmp_path / "acme_scoring.py").write_text(textwrap.dedent('''\
        from goproxy_router.scoring.api import Plugin

        class Prefer(Plugin):
            name = "prefer_b"

            def score(self, ctx, upstream):
                return 0.5 if upstream.name == "b" else 1.0

        class NotAPlugin:
            pass
        '''))
    dist = tmp_path / "acme_scoring-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-scoring\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[goproxy_router.plugins]\nprefer_b = acme_scoring:Prefer\nbad = acme_scoring:NotAPlugin\n"
        "missing = acme_scoring_nothere:X\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    [plugin] = load_plugins(["prefer_b"])
    assert names(Engine([plugin]).rank(ctx(), [candidate("a"), candidate("b")])) == ["b", "a"]
    with pytest.raises(PluginError, match="is not a Plugin subclass"):
        load_plugins(["bad"])
    with pytest.raises(PluginError, match="failed to load: ModuleNotFoundError"):
        load_plugins(["missing"])


# ---------------------------------------------------------------------------
# The plugin API: typed options, the kind, the once-per-request hook, the rename


class Band(PluginOptions):
    low: float = 0.5


class Typed(Plugin[Band]):
    name = "typed"

    def score(self, ctx: RequestContext, upstream: Candidate) -> float:
        return self.options.low


def test_the_type_parameter_sets_options_and_builtins_keep_one_copy() -> None:
    assert Typed.Options is Band
    assert Typed(Band()).score(ctx(), candidate("a")) == 0.5
    plugins = load_plugins([*BUILTINS, {"pin": {"rules": [{"match": ["x.example"], "prefer": ["a"]}]}}],
                           upstream_names={"a"})
    for plugin in plugins:
        assert isinstance(plugin.options, type(plugin).Options), plugin.name
        assert not hasattr(plugin, "opts"), plugin.name


def test_ctx_kind_is_the_protocols_kind_and_still_equals_its_string() -> None:
    assert typing.get_type_hints(RequestContext)["kind"] is Kind
    zip_ctx = ctx(kind=Kind.ZIP)
    assert zip_ctx.kind == "zip" and zip_ctx.kind != "info" and zip_ctx.kind in {"zip"}
    assert f"{zip_ctx.kind}" == "zip"


class Counting(Plugin):
    """Says in `begin` which module this request is for; `score` and `explain` read it."""

    name = "counting"

    def __init__(self, options: Any) -> None:
        super().__init__(options)
        self.begun: list[str | None] = []
        self.scored: list[tuple[str | None, str]] = []

    def begin(self, ctx: RequestContext) -> None:
        if ctx.module == "boom.example/m":
            raise RuntimeError("no state today")
        self.begun.append(ctx.module)

    def score(self, ctx: RequestContext, upstream: Candidate) -> float:
        self.scored.append((self.begun[-1], upstream.name))
        return 2.0 if upstream.name == "a" else 1.0

    def explain(self, ctx: RequestContext, upstream: Candidate) -> str:
        return f"begun for {self.begun[-1]}"


def test_begin_runs_once_per_ranking_before_its_scores() -> None:
    plugin = Counting(NoOptions())
    engine = Engine([plugin, Exploding(NoOptions())])
    engine.rank(ctx("one.example/m"), [candidate("a"), candidate("b"), candidate("c")])
    engine.rank(ctx("two.example/m"), [candidate("a"), candidate("b")])
    assert plugin.begun == ["one.example/m", "two.example/m"]
    assert plugin.scored == [("one.example/m", "a"), ("one.example/m", "b"), ("one.example/m", "c"),
                             ("two.example/m", "a"), ("two.example/m", "b")]
    report = explain(ctx("three.example/m"), engine.rank(ctx("four.example/m"), [candidate("a")]))
    assert report["upstreams"][0]["reasons"]["counting"] == "begun for three.example/m"


def test_a_failing_begin_makes_the_plugin_neutral_for_that_request(
        caplog: pytest.LogCaptureFixture) -> None:
    plugin = Counting(NoOptions())
    engine = Engine([plugin])
    with caplog.at_level(logging.ERROR, logger="router.scoring"):
        ranking = engine.rank(ctx("boom.example/m"), [candidate("a"), candidate("b")])
    assert [s.breakdown(ranking.plugins) for s in ranking.order] == [{"counting": 1.0}] * 2
    assert names(ranking) == ["a", "b"] and plugin.scored == []
    assert engine.errors == {"counting": 1}
    [record] = caplog.records
    assert "RuntimeError: no state today" in record.fields["problem"]  # type: ignore[attr-defined]
    assert names(engine.rank(ctx("ok.example/m"), [candidate("a"), candidate("b")])) == ["b", "a"]
    report = explain(ctx("boom.example/m"), ranking)
    assert report["upstreams"][0]["reasons"]["counting"] == "begin raised RuntimeError: no state today"


def test_pin_finds_its_rule_in_begin_and_keeps_no_request_context() -> None:
    [pin] = load_plugins([{"pin": {"rules": [{"match": ["golang.org/x/*"], "prefer": ["cn"]}]}}],
                         upstream_names={"cn", "io"})
    engine = Engine([pin])
    request = ctx("golang.org/x/mod")
    assert names(engine.rank(request, [candidate("io"), candidate("cn")])) == ["cn", "io"]
    held = [value for value in vars(pin).values()
            if value is request or (isinstance(value, tuple) and request in value)]
    assert held == []
    assert names(engine.rank(ctx("example.com/m"), [candidate("io"), candidate("cn")])) == ["io", "cn"]
    assert names(engine.rank(ctx(None), [candidate("io"), candidate("cn")])) == ["io", "cn"]


def test_errors_is_the_breakers_old_name_and_warns_once(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "_warned_renamed", set())
    assert Scoring().plugins == ("geo_affinity", "latency", "breaker", "weights")
    with caplog.at_level(logging.WARNING, logger="router.scoring"):
        load_plugins(Scoring().plugins)
        assert caplog.records == []
        [first] = load_plugins(["errors"])
        [second] = load_plugins(["errors"])
    assert first.name == second.name == "breaker"
    [record] = caplog.records
    assert record.getMessage().startswith("deprecated plugin name")
    assert record.fields == {"plugin": "errors", "use": "breaker"}  # type: ignore[attr-defined]
    with pytest.raises(PluginError, match="'breaker' is listed twice"):
        load_plugins(["breaker", "errors"])
    with pytest.raises(PluginError) as info:
        load_plugins(["latency", {"errors": {"bogus": 1}}])
    [problem] = info.value.problems
    assert problem.loc == (1, "errors", "bogus")      # where routes.yaml has it


def test_the_breaker_plugin_vetoes_under_its_name() -> None:
    bad = candidate("bad", 0.01, settings=StatsSettings(failure_threshold=1))
    bad.stats.record_failure(0.01, "refused", now=0.5)
    ranking = Engine(load_plugins(["breaker"])).rank(ctx(now=1.0), [bad, candidate("good")])
    assert names(ranking) == ["good"]
    assert ranking.vetoed[0].veto is not None and ranking.vetoed[0].veto.startswith("breaker: ejected")
