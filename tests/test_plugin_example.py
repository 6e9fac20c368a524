"""The README's plugin example is a real file, loaded from `scoring.plugin_dirs` and run.

examples/plugins/office_hours.py is what the README's "Writing a plugin"
shows, byte for byte; here it is loaded the way an operator would (a
directory in routes.yaml) and ranks a zip request differently from an info
request, in the engine and through the real app.
"""

from __future__ import annotations

import re
import textwrap

from goproxy_router.config.loader import parse_config
from goproxy_router.protocol.requests import Kind
from goproxy_router.scoring.api import RequestContext
from goproxy_router.scoring.engine import Engine
from goproxy_router.scoring.loader import load_plugins
from tests.conftest import REPO_ROOT
from tests.support import Module, ModuleTree
from tests.support.http import MakeEdge, MakeFake
from tests.test_scoring import candidate, names

EXAMPLES = REPO_ROOT / "examples" / "plugins"
EXAMPLE = EXAMPLES / "office_hours.py"
MOD = Module("example.com/lib", "v1.0.0")


def test_the_readmes_plugin_example_is_the_file() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("### Writing a plugin"):]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None
    assert block.group(1) == EXAMPLE.read_text()


def test_the_example_loads_from_plugin_dirs_and_sends_zips_to_the_batch_upstream() -> None:
    config = parse_config(textwrap.dedent(f"""\
        upstreams:
          dev: {{url: "https://dev.example"}}
          batch: {{url: "https://batch.example"}}
        routes:
          - {{name: public, match: ["*"], upstreams: [dev, batch]}}
        scoring:
          plugin_dirs: ["{EXAMPLES}"]
          plugins: [{{office_hours: {{batch_upstream: batch}}}}]
        """), "routes.yaml", {})
    [plugin] = load_plugins(config.scoring.plugins, config.scoring.plugin_dirs, set(config.upstreams))
    assert plugin.name == "office_hours" and type(plugin).Options.__name__ == "Options"
    engine = Engine([plugin])
    ups = [candidate("dev"), candidate("batch")]

    def order(kind: Kind) -> list[str]:
        return names(engine.rank(RequestContext(route="public", module=MOD.path, kind=kind), ups))

    assert order(Kind.ZIP) == ["batch", "dev"]
    assert order(Kind.INFO) == ["dev", "batch"]


async def test_the_example_steers_a_real_zip_request_but_not_an_info_request(
        edge: MakeEdge, fake_proxy: MakeFake) -> None:
    dev = await fake_proxy(ModuleTree([MOD]), name="dev")
    batch = await fake_proxy(ModuleTree([MOD]), name="batch")
    client = await edge({
        "upstreams": {"dev": {"url": dev.url}, "batch": {"url": batch.url}},
        "routes": [{"name": "public", "match": ["*"], "upstreams": ["dev", "batch"]}],
        "scoring": {"plugin_dirs": [str(EXAMPLES)],
                    "plugins": [{"office_hours": {"batch_upstream": "batch"}}]},
    })
    info, zip_ = f"/{MOD.path}/@v/{MOD.version}.info", f"/{MOD.path}/@v/{MOD.version}.zip"
    for path in (info, zip_):
        resp = await client.get(path)
        assert resp.status == 200, await resp.text()
        await resp.read()
    assert dev.raw_paths() == [info]
    assert batch.raw_paths() == [zip_]
