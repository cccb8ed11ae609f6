"""The web dashboard of ``bbo serve --dashboard-port``: its JSON API over a real port (keys,
tenants, read-only), and the page in a real headless Chromium showing a running study's new
trials without a reload. One ``bbo serve --auth`` process serves the whole module."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from sec_helpers import create_key, free_port, on_a_free_port

from bbo.testing.chat_server import ChatServer, Reply

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
SMALL_SPEC = {
    "parameters": [{"type": "float", "name": "x", "low": 0.0, "high": 1.0}],
    "objectives": [{"name": "y", "goal": "minimize"}],
}
# What the (scripted) LLM endpoint answers: markup the page must show as text, never run.
LLM_ANSWER = '<img src=x onerror="window.__xss = 1"> no JSON here'


def _browser_skip_reason():
    if CHROMIUM is None or CHROMEDRIVER is None:
        return "Debian's chromium and chromium-driver are not installed (.ci/run installs them)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def dash(tmp_path_factory):
    from bbo_client import Client
    from bbo_server.process import ServerProcess

    d = tmp_path_factory.mktemp("dashboard")
    db = "sqlite:///" + str(d / "bbo.db")
    key, _ = create_key(db, "alpha")
    other, _ = create_key(db, "beta")
    llm = ChatServer([Reply(LLM_ANSWER)]).start()
    srv, port = on_a_free_port(
        lambda p: ServerProcess(
            db,
            log_path=str(d / "server.log"),
            args=["--auth", "--workers", "1", "--dashboard-port", str(p)]
            + ["--llm-base-url", llm.url, "--llm-model", "scripted"],
        ).start()
    )
    try:
        with Client(srv.address, api_key=key, retries=3) as client:
            yield SimpleNamespace(
                srv=srv, url=f"http://127.0.0.1:{port}/", key=key, other=other, client=client
            )
    finally:
        srv.stop()
        llm.stop()


def get(url: str, key: str | None = None, header: str = "authorization", method: str = "GET"):
    """(status, JSON body or text) of a request; ``key`` goes in ``header`` (Bearer for
    authorization)."""
    req = urllib.request.Request(url, method=method)
    if key is not None:
        req.add_header(header, f"Bearer {key}" if header == "authorization" else key)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, raw, ctype = r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        status, raw, ctype = e.code, e.read(), e.headers.get("content-type", "")
    return status, json.loads(raw) if "json" in ctype else raw.decode()


def everything(dash, name: str, route: str, limit: int, key: str = "items") -> list:
    """Every item of a paged dashboard route, a page of at most ``limit`` at a time."""
    out, cursor = [], "after=0"
    while True:
        status, page = get(
            dash.url + f"api/studies/{name}/{route}?{cursor}&limit={limit}", dash.key
        )
        assert status == 200 and len(page[key]) <= limit, page
        out += page[key]
        if not page["more"]:
            return out
        last = page[key][-1]
        cursor = (
            f"after={last['id']}" if route == "trials" else f"after={last[0]}&after_step={last[1]}"
        )


def running_study(client, name: str, llm: bool = False):
    """Two objectives, one outcome constraint: user trials (one infeasible), asked trials with
    learning curves, a failure, and one trial still pending. ``llm``: the study asks the LLM
    endpoint for a warm start on its first ask (the scripted answer is refused and logged)."""
    from bbo_client import Constraint, Float, Llm, Maximize, Minimize

    study = client.create_study(
        name,
        parameters=[Float("x", 0.0, 1.0), Float("lr", 1e-4, 1e-1, log=True)],
        objectives=[Minimize("loss"), Maximize("acc")],
        constraints=[Constraint("mem", "<=", 10.0)],
        n_initial=20,
        llm=Llm(enabled=True, derive_priors=False) if llm else None,
    )
    for i in range(8):
        x = i / 7
        mem = 12.0 if i == 3 else 5.0
        study.add_trial({"x": x, "lr": 10 ** (-1 - 3 * x)}, {"loss": x, "acc": x * x, "mem": mem})
    asked = study.ask(3, worker_id="w1")
    for t in asked[:2]:
        for step in range(3):
            study.report_intermediate(t, step, 1.0 / (step + 1 + t.id))
        study.tell(t, {"loss": 0.5, "acc": 0.1, "mem": 1.0})
    study.tell(asked[2], failed=True, reason="OOM on the test box")
    study.ask(1, worker_id="w2")  # left pending
    return study


def test_api_needs_a_valid_key_and_is_read_only(dash):
    name = "keys-study"
    running = running_study(dash.client, name)
    paged = [f"api/studies/{name}/{r}" for r in ("trials", "intermediates", "llm_calls")]
    for path in ("api/session", "api/studies", f"api/studies/{name}", *paged):
        status, body = get(dash.url + path)
        assert status == 401 and "missing API key" in body["error"], (path, body)
        status, body = get(dash.url + path, "bbo_000000000000_" + "A" * 43)
        assert status == 401 and "invalid API key" in body["error"], (path, body)
    assert get(dash.url + "api/studies", "not-a-bearer", header="x-api-key")[0] == 401
    req = urllib.request.Request(dash.url + "api/studies", headers={"authorization": "Basic xx"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 401

    # either header works; the tenant is the key's
    assert get(dash.url + "api/session", dash.key)[1] == {"tenant": "alpha", "auth": True}
    status, body = get(dash.url + "api/studies", dash.key, header="x-api-key")
    assert status == 200 and name in [s["name"] for s in body["studies"]]

    # no write path: every other method is refused, nothing changes
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert get(dash.url + f"api/studies/{name}", dash.key, method=method)[0] == 405
    assert len(running.trials()) == 12

    # the page itself holds no data; it is served to anyone (it asks for a key)
    status, page = get(dash.url)
    assert status == 200 and "key-form" in page and name not in page
    assert get(dash.url + "static/plotly.min.js")[0] == 200


def noisy_study(client, name: str):
    """A declared-noisy bowl at x = 0.6 whose best draw is a lucky one (-0.4 at x = 0.1, where the
    other draws are 0.3 and 0.35), after one ask has fitted the model."""
    from bbo_client import Float, Minimize

    study = client.create_study(
        name, parameters=[Float("x", 0.0, 1.0)], objectives=[Minimize("f", noise="noisy")]
    )
    xs = [0.1, 0.1, 0.1, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.95]
    ys = [0.3, -0.4, 0.35, 0.05, 0.02, 0.0, 0.01, -0.01, 0.0, 0.02, 0.05, 0.14]
    lucky = [study.add_trial({"x": x}, {"f": y}) for x, y in zip(xs, ys, strict=True)][1]
    study.ask(1, worker_id="w")
    return study, lucky.id


def test_a_noisy_studys_best_is_the_models_choice_as_in_get_best(dash):
    """Under noise the page marks the trial GetBest reports (the best posterior mean), not the
    luckiest draw, and shows why and the model's estimate of its objective."""
    name = "noisy-json-study"
    study, lucky = noisy_study(dash.client, name)
    best = study.best()
    status, body = get(dash.url + f"api/studies/{name}", dash.key)
    assert status == 200
    assert [t["id"] for t in body["best"]] == [best.trials[0].id] != [lucky]
    assert body["best_count"] == 1
    assert body["selection"] == best.selection and "posterior mean" in body["selection"]
    e = body["estimate"]
    assert e == {
        "value": best.estimate.value,
        "lower": best.estimate.lower,
        "upper": best.estimate.upper,
    }
    assert e["lower"] < e["value"] < e["upper"]
    # a noise-free study's best is its best observed trial, chosen by nothing else
    clean = running_study(dash.client, "clean-json-study")
    body = get(dash.url + "api/studies/clean-json-study", dash.key)[1]
    assert body["selection"] == "" and body["estimate"] is None
    assert [t["id"] for t in body["best"]] == [t.id for t in clean.best().trials]


def test_another_tenants_study_is_not_found(dash):
    name = "tenant-study"
    running_study(dash.client, name)
    status, body = get(dash.url + "api/studies", dash.other)
    assert status == 200 and body == {"tenant": "beta", "studies": [], "next": "", "more": False}
    for route in ("", "/trials", "/intermediates", "/llm_calls"):
        path = f"api/studies/{name}{route}"
        status, body = get(dash.url + path, dash.other)
        assert status == 404 and body["error"] == f"study '{name}' not found"
    assert get(dash.url + f"api/studies/{name}", dash.key)[0] == 200
    assert len(everything(dash, name, "trials", 1000, "trials")) == 12
    status, body = get(dash.url + "api/studies/" + "x" * 100_000, dash.key)  # not echoed whole
    assert status == 404 and body["error"] == f"study '{'x' * 140}' not found"


def test_study_json_matches_what_the_api_stored(dash):
    name = "json-study"
    study = running_study(dash.client, name)
    status, body = get(dash.url + f"api/studies/{name}", dash.key)
    assert status == 200 and "trials" not in body and "intermediates" not in body
    assert body["counts"] == {"COMPLETED": 10, "FAILED": 1, "PENDING": 1}
    paged = everything(dash, name, "trials", 5, "trials")
    trials = {t["id"]: t for t in paged}
    stored = {t.id: t for t in study.trials()}
    assert [t["id"] for t in paged] == sorted(stored)
    for tid, t in stored.items():
        assert trials[tid]["state"] == t.state and trials[tid]["origin"] == t.origin
        assert trials[tid]["metrics"] == pytest.approx(t.metrics)
        assert trials[tid]["open"] == (t.state == "PENDING")
    assert [t["feasible"] for t in paged[:8]] == [True] * 3 + [False] + [True] * 4
    best = study.best().trials
    assert sorted(t["id"] for t in body["best"]) == sorted(t.id for t in best)
    assert body["best_count"] == len(best) and all(t["params"] for t in body["best"])
    asked = [t for t in stored.values() if t.worker_id == "w1" and t.state == "COMPLETED"]
    points = everything(dash, name, "intermediates", 2, "points")
    assert sorted({p[0] for p in points}) == sorted(t.id for t in asked)
    assert [p[1] for p in points if p[0] == asked[0].id] == [0, 1, 2]
    assert body["study"]["objectives"] == [
        {"name": "loss", "goal": "minimize"},
        {"name": "acc", "goal": "maximize"},
    ]
    # a value reported after that read is in the next one (nothing stale is served), read from
    # the pending trial on as the page does
    (pending,) = study.trials(states=["PENDING"])
    curve = f"api/studies/{name}/intermediates?after={pending.id - 1}"
    study.report_intermediate(pending, 0, 0.5)
    assert get(dash.url + curve, dash.key)[1] == {"points": [[pending.id, 0, 0.5]], "more": False}
    study.report_intermediate(pending, 0, 0.25)  # the same step again: the value is replaced
    assert get(dash.url + curve, dash.key)[1]["points"] == [[pending.id, 0, 0.25]]
    # the summary follows the counts (it is kept while they and the study's state stand still)
    study.tell(pending, {"loss": 0.05, "acc": 0.9, "mem": 1.0})
    body = get(dash.url + f"api/studies/{name}", dash.key)[1]
    assert body["counts"] == {"COMPLETED": 11, "FAILED": 1}
    assert [t["id"] for t in body["best"]] != [] and pending.id in [t["id"] for t in body["best"]]

    # the LLM log, paged by the last id seen; a wrong cursor names the parameter
    assert get(dash.url + f"api/studies/{name}/llm_calls", dash.key)[1] == {
        "calls": [],
        "more": False,
    }
    llm_study = running_study(dash.client, name + "-llm", llm=True)
    stored = [(c.purpose, c.outcome, c.response) for c in llm_study.llm_calls()]
    assert stored
    seen, after, more = [], 0, True
    while more:
        path = f"api/studies/{name}-llm/llm_calls?after={after}&limit=1"
        status, page = get(dash.url + path, dash.key)
        assert status == 200 and len(page["calls"]) <= 1
        seen += [(c["purpose"], c["outcome"], c["response"]) for c in page["calls"]]
        after, more = (page["calls"][-1]["id"] if page["calls"] else after), page["more"]
    assert seen == stored


def test_bad_page_arguments_are_400_naming_what_to_fix(dash):
    name = "bad-args-study"
    running_study(dash.client, name)
    common = ("after=-1", "after=x", "after=1.5", f"after={2**63}", "limit=0", "limit=")
    cases = {
        "llm_calls": (*common, "limit=201"),
        "trials": (*common, "limit=1001", "limit=1e3"),
        "intermediates": (*common, "limit=10001", "after_step=-1", "after_step=two"),
    }
    for route, bad_args in cases.items():
        for bad in bad_args:
            status, body = get(dash.url + f"api/studies/{name}/{route}?{bad}", dash.key)
            field = bad.split("=")[0]
            if bad == "limit=":  # empty: the default
                assert status == 200, (route, body)
                continue
            assert (
                status == 400 and f"query parameter '{field}' must be an integer" in body["error"]
            ), (route, bad, body)


def test_plugin_refuses_an_open_dashboard_and_a_taken_port(registry):
    from bbo_server.plugins import dashboard as plugin
    from bbo_server.server import ServerOptions

    # no API keys (no gate) and a non-loopback host: refused before anything is served
    args = argparse.Namespace(dashboard_port=free_port(), dashboard_host="0.0.0.0")
    opts = ServerOptions()
    plugin.configure_server(opts, args)
    with pytest.raises(SystemExit, match="refusing --dashboard-host 0.0.0.0 without API keys"):
        opts.on_start[-1](registry)

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        args = argparse.Namespace(dashboard_port=held.getsockname()[1], dashboard_host="127.0.0.1")
        with pytest.raises(SystemExit, match="cannot listen on 127.0.0.1:.* for the dashboard"):
            plugin.configure_server(ServerOptions(), args)
    with pytest.raises(SystemExit, match="--dashboard-port must be in 1..65535"):
        plugin.configure_server(
            ServerOptions(), argparse.Namespace(dashboard_port=70000, dashboard_host="127.0.0.1")
        )


def test_without_keys_only_requests_addressed_to_loopback_are_answered(registry):
    """Without API keys the dashboard listens on loopback only, but a page on another site whose
    name an attacker re-points at 127.0.0.1 (DNS rebinding) is same-origin to the browser: its
    requests name that site in Host and are refused; loopback names are answered. With keys
    every request carries its own key, so the Host is not checked there."""
    import http.client

    from bbo_server import dashboard

    registry.create_study("rebind-study", SMALL_SPEC)
    server = dashboard.DashboardServer(dashboard.bind("127.0.0.1", 0)).start(
        dashboard.create_app(registry)
    )
    port = server.port

    def status(host: str) -> tuple[int, bytes]:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            c.request("GET", "/api/studies/rebind-study", headers={"Host": host})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    try:
        for host in (f"attacker.example:{port}", "attacker.example", f"127.0.0.1.nip.io:{port}"):
            code, body = status(host)
            assert code == 400 and b"rebind-study" not in body and b"loopback" in body, host
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
            assert status(host)[0] == 200, host
    finally:
        server.stop()


def test_https_with_the_apis_certificate_and_client_ca(registry, tmp_path):
    """In process: the dashboard's server on a real port, TLS as --tls-cert / --tls-client-ca."""
    import ssl

    from sec_helpers import make_certs

    from bbo_server import dashboard

    certs = make_certs(tmp_path / "certs")
    registry.create_study("tls-study", SMALL_SPEC)
    server = dashboard.DashboardServer(
        dashboard.bind("127.0.0.1", 0),
        certs["server_cert"],
        certs["server_key"],
        certs["ca"],
    ).start(dashboard.create_app(registry))
    url = f"https://127.0.0.1:{server.port}/api/studies"
    try:
        ctx = ssl.create_default_context(cafile=certs["ca"])
        with pytest.raises(OSError):  # no client certificate: the handshake is refused
            urllib.request.urlopen(url, context=ctx, timeout=10)
        ctx.load_cert_chain(certs["client_cert"], certs["client_key"])
        with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
            body = json.loads(r.read())
        assert [s["name"] for s in body["studies"]] == ["tls-study"]
        with pytest.raises(OSError):  # and no plain HTTP on that port
            urllib.request.urlopen(url.replace("https", "http"), timeout=10)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1800",
    ):
        opts.add_argument(a)
    with tempfile.TemporaryDirectory(prefix="bbo-chromium-") as profile:
        opts.add_argument(f"--user-data-dir={profile}")
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
        try:
            yield driver
        finally:
            driver.quit()


@pytest.mark.skipif(_browser_skip_reason() is not None, reason=_browser_skip_reason() or "")
def test_browser_shows_a_running_study_live(dash, browser, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    name = "browser-study"
    study = running_study(dash.client, name, llm=True)
    calls = study.llm_calls()
    sent = [c for c in calls if c.response]  # not those skipped after unusable answers
    assert sent and all(c.response == LLM_ANSWER for c in sent), calls
    # an element read while the page re-renders it (a poll, a route change) is stale: look again
    wait = WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,))
    css = lambda sel: browser.find_elements(By.CSS_SELECTOR, sel)

    # Without a key: the key form, and no study data on the page.
    browser.get(dash.url + f"#/study/{name}")
    form = wait.until(EC.visibility_of_element_located((By.ID, "key-form")))
    assert not css("#trials-table") and name not in browser.find_element(By.ID, "main").text
    # A wrong key is refused and said so; the right one opens the study.
    browser.find_element(By.ID, "key-input").send_keys("bbo_000000000000_" + "B" * 43)
    browser.find_element(By.ID, "key-submit").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "key-error"), "invalid API key"))
    assert form.is_displayed()
    browser.find_element(By.ID, "key-input").send_keys(dash.key)
    browser.find_element(By.ID, "key-submit").click()
    rows = "#trials-table tbody tr[data-trial-id]"
    wait.until(lambda d: len(css(rows)) == 12)
    assert browser.find_element(By.ID, "tenant").text == "tenant alpha"

    # the charts are drawn: best so far (points + line), Pareto front, parameters, curves
    wait.until(lambda d: len(css("#plot-history .scatterlayer .trace")) == 3)
    assert css("#pareto-section:not([hidden]) #plot-pareto .scatterlayer .trace")
    assert len(css("#plot-params .scatterlayer .trace")) == 2
    assert (
        len(css("#intermediate-section:not([hidden]) #plot-intermediate .scatterlayer .trace")) == 2
    )

    # the LLM call log, its answer shown as text
    llm_rows = css("#llm-table tbody tr[data-call-id]")
    assert len(llm_rows) == len(calls)
    assert llm_rows[0].find_elements(By.TAG_NAME, "td")[2].text == calls[0].purpose
    browser.execute_script(
        "document.querySelectorAll('#llm-table details').forEach(d => d.open = true)"
    )
    assert LLM_ANSWER in browser.find_element(By.ID, "llm-table").text
    assert not css("#llm-table img") and browser.execute_script("return window.__xss") is None

    # a trial told after the page loaded shows up without a reload
    browser.execute_script("window.__loaded_once = 'yes'")
    (t,) = study.ask(1, worker_id="late-worker")
    study.tell(t, {"loss": 0.01, "acc": 0.99, "mem": 2.0})
    new_row = f'{rows}[data-trial-id="{t.id}"][data-state="COMPLETED"]'
    wait.until(lambda d: css(new_row))
    assert browser.execute_script("return window.__loaded_once") == "yes"
    assert len(css(rows)) == 13
    assert "late-worker" in css(new_row)[0].text
    # ... and so does a pending trial's new intermediate value. The polls read the trials and
    # curves from the first open trial on (the one left pending), not the whole study again.
    (pending,) = study.trials(states=["PENDING"])
    study.report_intermediate(pending, 0, 0.3)
    wait.until(lambda d: len(css("#plot-intermediate .scatterlayer .trace")) == 3)
    urls = browser.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name)"
    )
    afters = [int(re.search(r"/trials\?after=(\d+)", u).group(1)) for u in urls if "/trials?" in u]
    assert len(afters) >= 3 and afters[0] == 0 and set(afters[1:]) == {pending.id - 1}, afters

    # filter by state and origin, sort by a column
    Select(browser.find_element(By.ID, "state-filter")).select_by_value("FAILED")
    states = [r.get_attribute("data-state") for r in css(rows)]
    assert states == ["FAILED"]
    Select(browser.find_element(By.ID, "state-filter")).select_by_value("")
    Select(browser.find_element(By.ID, "origin-filter")).select_by_value("user")
    assert {r.get_attribute("data-origin") for r in css(rows)} == {"user"} and len(css(rows)) == 8
    browser.find_element(By.CSS_SELECTOR, '#trials-table th[data-key="m:loss"]').click()
    browser.find_element(By.CSS_SELECTOR, '#trials-table th[data-key="m:loss"]').click()
    ids = [int(r.get_attribute("data-trial-id")) for r in css(rows)]
    assert ids == list(range(8, 0, -1))  # user trials' loss grows with their id: descending
    assert browser.find_element(By.ID, "trial-count").text == "8 of 13 trials"

    # a noisy study's summary names the model's choice, why, and its estimate
    _, lucky = noisy_study(dash.client, "browser-noisy-study")
    browser.get(dash.url + "#/study/browser-noisy-study")
    wait.until(lambda d: "model estimate" in d.find_element(By.ID, "summary").text)
    summary = browser.find_element(By.ID, "summary").text
    assert "posterior mean" in summary and f"trial {lucky}:" not in summary

    # the studies list links to the study
    browser.get(dash.url + "#/")
    wait.until(lambda d: css(f'#studies-table tr[data-study="{name}"]'))
    browser.save_screenshot(str(tmp_path / "dashboard.png"))
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    # the two refusals of the wrong key (and the first, keyless request) are the only errors
    assert all("401" in e["message"] for e in severe), severe


def _request(path: str, query: str = "", **path_params):
    from starlette.requests import Request

    scope = {"type": "http", "method": "GET", "path": path, "headers": []}
    return Request({**scope, "query_string": query.encode(), "path_params": path_params})


def test_page_sizes_do_not_grow_with_what_the_page_does_not_show(registry):
    """The study list (polled every 2 s) carries no descriptions: it shows none, and each may be
    64 KiB (10,000 studies made it 640 MiB). An LLM call page ends early past PAGE_BYTES (a call
    holds up to a 1 MiB answer; 200 of them were one response) and says there is more."""
    from bbo.paging import PAGE_BYTES
    from bbo.storage import LlmCallRecord
    from bbo_server.dashboard import Dashboard

    d = Dashboard(registry)
    for i in range(3):
        registry.create_study(f"described-{i}", {**SMALL_SPEC, "description": "d" * 60_000})
    listing = d.studies(_request("/api/studies")).body
    assert len(listing) < 2_000 and b"ddd" not in listing
    detail = json.loads(d.study_detail(_request("/api/studies/x", name="described-0")).body)
    assert detail["study"]["description"] == "d" * 60_000

    study = registry.get_study("described-0")
    for _ in range(5):
        study.log_llm_call(LlmCallRecord("warmstart", "m", "p", "r" * 900_000, "ok"))
    seen, after = [], 0
    while True:
        body = d.llm_calls(_request("/x", f"after={after}&limit=200", name="described-0")).body
        assert len(body) <= PAGE_BYTES + 1_000_000
        page = json.loads(body)
        seen += [c["id"] for c in page["calls"]]
        if not page["more"]:
            break
        after = page["calls"][-1]["id"]
    assert seen == [1, 2, 3, 4, 5]


def test_a_large_studys_pages_are_bounded_and_cover_it_once(registry):
    """A study of 1,500 trials, each with a 4,000-character reason (as long as a tell keeps; most
    are failures), and 300 intermediate values: the summary holds none of them; a trial page holds at most its
    limit (1,000) and ends early past PAGE_BYTES; paging through returns every trial and every
    value exactly once, in order."""
    from bbo.paging import PAGE_BYTES
    from bbo.storage import NewTrial
    from bbo.trial import Metric, TrialState
    from bbo_server.dashboard import MAX_POINT_PAGE, MAX_TRIAL_PAGE, Dashboard

    d = Dashboard(registry)
    study, _ = registry.create_study("large", SMALL_SPEC)
    n = 1500
    done, failed = TrialState.COMPLETED, TrialState.FAILED
    new = [
        NewTrial({"x": i / n}, "user", done, {"y": Metric(i / n)}, "r" * 4000)
        if i % 750 == 0  # two: the best is the best observed, no model is fitted
        else NewTrial({"x": i / n}, "user", failed, reason="r" * 4000)
        for i in range(n)
    ]
    registry.storage.insert_trials(study.uid, new)
    for tid in range(1, 4):
        for step in range(100):
            registry.storage.add_intermediate(study.uid, tid, step, tid + step / 100)

    detail = d.study_detail(_request("/x", name="large")).body
    assert len(detail) < 20_000
    summary = json.loads(detail)
    assert summary["counts"] == {"COMPLETED": 2, "FAILED": n - 2}
    assert summary["best_count"] == 1
    assert [t["id"] for t in summary["best"]] == [1]

    def pages(route, key, limit, cursor):
        seen, query = [], "after=0"
        while True:
            body = getattr(d, route)(_request("/x", f"{query}&limit={limit}", name="large")).body
            assert len(body) <= PAGE_BYTES + 10_000
            page = json.loads(body)
            assert 0 < len(page[key]) <= limit
            seen.append(page[key])
            if not page["more"]:
                return seen
            query = cursor(page[key][-1])

    trial_pages = pages("trials", "trials", MAX_TRIAL_PAGE, lambda t: f"after={t['id']}")
    assert len(trial_pages[0]) < MAX_TRIAL_PAGE  # cut by bytes: 1,000 of them are 4 MB
    ids = [t["id"] for p in trial_pages for t in p]
    assert ids == list(range(1, n + 1))
    assert not any(t["open"] for p in trial_pages for t in p)
    assert [len(p) for p in pages("trials", "trials", 400, lambda t: f"after={t['id']}")] == [
        400,
        400,
        400,
        300,
    ]

    want = [[tid, step, v] for tid, pts in study.intermediates().items() for step, v in pts]
    assert len(want) == 300
    by_step = lambda p: f"after={p[0]}&after_step={p[1]}"
    point_pages = pages("intermediates", "points", 120, by_step)
    assert [len(p) for p in point_pages] == [120, 120, 60]  # cut inside trials, resumed
    assert [p for page in point_pages for p in page] == want
    assert [len(p) for p in pages("intermediates", "points", MAX_POINT_PAGE, by_step)] == [300]


def test_page_arguments_are_plain_digits_given_once(registry):
    """A page argument is what the page sends: ASCII digits, once. int() alone read '+2', ' 2 ',
    '1_0' and Arabic-Indic or full-width digits as numbers, and a repeated parameter silently took
    its last value; each is 400 naming the parameter (and a huge value is not echoed whole)."""
    from starlette.exceptions import HTTPException

    from bbo_server.dashboard import Dashboard

    d = Dashboard(registry)
    registry.create_study("strict-args", SMALL_SPEC)
    for route in ("trials", "intermediates", "llm_calls"):
        call = getattr(d, route)
        assert call(_request("/x", "after=0&limit=5", name="strict-args")).status_code == 200
        for query in (
            "after=%2B2",
            "after=%202%20",
            "after=1_0",
            "after=%D9%A3",
            "limit=%EF%BC%92",
        ):
            with pytest.raises(HTTPException) as e:
                call(_request("/x", query, name="strict-args"))
            field = query.split("=")[0]
            assert e.value.status_code == 400, (route, query)
            assert f"query parameter '{field}' must be an integer" in e.value.detail
        with pytest.raises(HTTPException) as e:
            call(_request("/x", "after=1&after=3", name="strict-args"))
        assert e.value.status_code == 400 and "'after' is given 2 times" in e.value.detail
        with pytest.raises(HTTPException) as e:
            call(_request("/x", "after=" + "9" * 5000, name="strict-args"))
        assert e.value.status_code == 400 and len(e.value.detail) < 200


@pytest.mark.skipif(_browser_skip_reason() is not None, reason=_browser_skip_reason() or "")
def test_browser_drops_a_deleted_studys_llm_log_when_its_name_is_reused(dash, browser):
    """A study deleted and created again under its name between two polls: the page saw the new
    uid and dropped the old study's trials and curves, but kept its LLM call rows and asked the
    new study for the calls after the old study's last number (a new study's are numbered from 1
    again), so the new study's page showed the old study's calls and hid its own first ones."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from bbo_client import Float, Minimize

    name = "browser-reused-name"
    wait = WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,))
    css = lambda sel: browser.find_elements(By.CSS_SELECTOR, sel)
    rows = "#trials-table tbody tr[data-trial-id]"
    for _attempt in range(3):
        old = running_study(dash.client, name, llm=True)
        assert old.llm_calls()
        browser.get(dash.url + f"#/study/{name}")
        if css("#key-form") and css("#key-form")[0].is_displayed():
            browser.find_element(By.ID, "key-input").send_keys(dash.key)
            browser.find_element(By.ID, "key-submit").click()
        wait.until(lambda d: len(css(rows)) == 12 and css("#llm-table tbody tr[data-call-id]"))
        # gone, and back with no LLM and one trial (the page polls every 2 s)
        old.delete()
        new = dash.client.create_study(name, [Float("x", 0.0, 1.0)], Minimize("y"))
        new.add_trial({"x": 0.5}, {"y": 1.0})
        wait.until(
            lambda d: len(css(rows)) == 1 or "not found" in d.find_element(By.ID, "main").text
        )
        if css(rows):  # else a poll fell between the delete and the create: again
            break
        new.delete()
    else:
        pytest.fail("every poll fell between the delete and the create")
    wait.until(lambda d: not css("#llm-table tbody tr[data-call-id]"))


@pytest.mark.skipif(_browser_skip_reason() is not None, reason=_browser_skip_reason() or "")
def test_browser_holds_the_newest_trials_of_a_long_study(dash, browser):
    """Past the trials the page holds (10,000; lowered here by the session item), it shows the
    newest and follows new ones: it showed the first 10,000, and a study running for months
    never showed another trial."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from bbo_client import Float, Minimize

    study = dash.client.create_study("long-study", [Float("x", 0.0, 1.0)], Minimize("y"))
    for i in range(12):
        study.add_trial({"x": i / 20}, {"y": float(i)})
    browser.get(dash.url + "#/study/long-study")
    browser.execute_script(
        f"sessionStorage.setItem('bbo-api-key', {json.dumps(dash.key)});"
        "sessionStorage.setItem('bbo-max-trials', '5');"
    )
    browser.refresh()
    wait = WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,))
    css = lambda sel: browser.find_elements(By.CSS_SELECTOR, sel)

    def shown() -> list[int]:
        rows = css("#trials-table tbody tr[data-trial-id]")
        return sorted(int(r.get_attribute("data-trial-id")) for r in rows)

    wait.until(lambda d: shown() == [8, 9, 10, 11, 12])
    assert "newest 5 of 12" in browser.find_element(By.ID, "trial-note").text
    for i in range(3):
        study.add_trial({"x": 0.7 + i / 100}, {"y": -1.0})
    wait.until(lambda d: shown() == [11, 12, 13, 14, 15])
    browser.execute_script("sessionStorage.removeItem('bbo-max-trials')")


def test_a_study_deleted_while_a_page_reads_it_is_404(registry):
    """The study is found, then deleted before its page is read: the read's NotFoundError was
    uncaught, a 500 with a logged traceback, where the page expects 404 (it then says the study
    is gone and stops polling)."""
    from starlette.exceptions import HTTPException

    from bbo_server.dashboard import Dashboard

    d = Dashboard(registry)
    study, _ = registry.create_study("deleted-mid-read", SMALL_SPEC)
    registry.delete_study("deleted-mid-read")
    d.study = lambda request, tenant: study  # found just before the delete
    for route in ("study_detail", "trials", "intermediates", "llm_calls"):
        with pytest.raises(HTTPException) as e:
            getattr(d, route)(_request("/x", "", name="deleted-mid-read"))
        assert e.value.status_code == 404 and "not found" in e.value.detail, route


def test_the_study_list_comes_in_pages(registry):
    """/api/studies read every study of the tenant (up to --max-studies, each spec up to
    --max-spec-bytes, twice) on every poll of the list; it is now a page, as ListStudies's:
    at most ``limit`` studies (fewer past about PAGE_BYTES of specs), ``next`` naming the next."""
    from starlette.exceptions import HTTPException

    from bbo_server.dashboard import Dashboard

    d = Dashboard(registry)
    names = [f"listed-{i}" for i in range(5)]
    for name in names:
        registry.create_study(name, SMALL_SPEC)
    seen, after, sizes = [], "", []
    while True:
        page = json.loads(d.studies(_request("/api/studies", f"limit=2&after={after}")).body)
        sizes.append(len(page["studies"]))
        seen += [s["name"] for s in page["studies"]]
        assert page["more"] == bool(page["next"])
        if not page["more"]:
            break
        after = page["next"]
    assert seen == names and sizes == [2, 2, 1]
    everything = json.loads(d.studies(_request("/api/studies")).body)
    assert [s["name"] for s in everything["studies"]] == names and not everything["more"]
    for bad in ("after=garbage", "after=a&after=b", "limit=1001", "limit=0", "after=" + "x" * 600):
        with pytest.raises(HTTPException) as e:
            d.studies(_request("/api/studies", bad))
        assert e.value.status_code == 400 and "query parameter" in e.value.detail, bad


@pytest.mark.skipif(_browser_skip_reason() is not None, reason=_browser_skip_reason() or "")
def test_browser_lists_a_page_of_studies_and_more_on_request(dash, browser):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from bbo_client import Client, Float, Minimize

    key, _ = create_key(dash.srv.db, "gamma")  # a tenant of its own: exactly these studies
    with Client(dash.srv.address, api_key=key, retries=3) as c:
        for i in range(105):
            c.create_study(f"many-{i:03d}", [Float("x", 0.0, 1.0)], Minimize("y"))
    browser.get(dash.url + "#/")
    browser.execute_script(f"sessionStorage.setItem('bbo-api-key', {json.dumps(key)})")
    browser.refresh()
    wait = WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,))
    css = lambda sel: browser.find_elements(By.CSS_SELECTOR, sel)
    rows = "#studies-table tr[data-study]"
    wait.until(lambda d: len(css(rows)) == 100 and css("#more-studies:not([hidden])"))
    browser.find_element(By.ID, "more-studies").click()
    wait.until(lambda d: len(css(rows)) == 105 and css("#more-studies[hidden]"))
    assert css(rows)[-1].get_attribute("data-study") == "many-104"


def test_the_api_rate_limit_holds_on_the_dashboard_too(registry, monkeypatch):
    """With --rate-limit, a tenant's dashboard requests are held to the API's rate and burst, in a
    bucket of their own: they went around it (a tenant held to 1 ListTrials/s read the same pages
    of up to 2 MiB through /trials as fast as it liked). Over it: 429 naming the flag, with a
    Retry-After; the tenant's API calls keep their tokens. The plugin hands the gate's limits on."""
    from starlette.exceptions import HTTPException

    from bbo_server import dashboard
    from bbo_server.auth import Gate
    from bbo_server.limits import LimitChecker, Limits
    from bbo_server.plugins import dashboard as plugin
    from bbo_server.server import ServerOptions

    limits = LimitChecker(Limits(rate=0.2, burst=2))
    d = dashboard.Dashboard(registry, limits=limits)
    registry.create_study("rated", SMALL_SPEC)
    for _ in range(2):
        assert d.trials(_request("/x", "after=0", name="rated")).status_code == 200
    for route in (d.trials, d.study_detail, d.intermediates, d.llm_calls):
        with pytest.raises(HTTPException) as e:
            route(_request("/x", name="rated"))
        assert e.value.status_code == 429 and "--rate-limit" in e.value.detail
        assert int(e.value.headers["Retry-After"]) >= 1
    with pytest.raises(HTTPException, match="over 0.2 dashboard requests/s"):
        d.studies(_request("/api/studies"))
    limits.check("default", "ListTrials", None)  # the API's own bucket is untouched
    assert dashboard.Dashboard(registry).trials(_request("/x", name="rated")).status_code == 200

    handed: list = []
    monkeypatch.setattr(dashboard, "create_app", lambda *a: handed.append(a))
    monkeypatch.setattr(dashboard.DashboardServer, "start", lambda s, app: handed.append(s))
    opts = ServerOptions(interceptors=[Gate(None, limits)])
    plugin.configure_server(
        opts, argparse.Namespace(dashboard_port=free_port(), dashboard_host="127.0.0.1")
    )
    opts.on_start[-1](registry)
    handed[1].sock.close()
    assert handed[0][3] is limits


def test_busy_tenants_slow_requests_leave_threads_to_the_others(storage):
    """The endpoints run on THREADS threads shared by every tenant. One tenant's summaries each
    waiting on its study (here in ``recommend``, as on a running ask's lock) held all 40, and
    another tenant's page got no answer at all. Now a tenant alone has at most TENANT_REQUESTS of
    them at once; its next request is 429 with a Retry-After, and the other tenant's are answered.
    With that half each, two busy tenants held all 40 and a third one's page waited: each of
    several busy tenants has at most its share (the threads divided among them and one more)."""
    import threading
    import time

    from sec_helpers import SobolStrategy

    from bbo.registry import StudyRegistry
    from bbo.storage.keys import KeyStore
    from bbo_server import dashboard

    release, lock = threading.Event(), threading.Lock()
    entered = {"a": 0, "b": 0}  # summaries waiting in each busy tenant's study

    class Waits(SobolStrategy):
        def recommend(self, trials):
            if self.spec.description in entered:
                with lock:
                    entered[self.spec.description] += 1
                assert release.wait(60)
            return None

    keys = KeyStore(storage)
    key = {t: keys.create(t, "test")[0] for t in ("a", "b", "c")}
    registry = StudyRegistry(storage, strategy_factory=Waits)
    for tenant, name in (("a", "slow"), ("b", "slow"), ("c", "quick")):
        study, _ = registry.create_study(name, {**SMALL_SPEC, "description": tenant}, tenant)
        study.add_trial({"x": 0.5}, {"y": 1.0})
    server = dashboard.DashboardServer(dashboard.bind("127.0.0.1", 0)).start(
        dashboard.create_app(registry, keys)
    )
    url = f"http://127.0.0.1:{server.port}/api/"
    answers: dict[str, list] = {"a": [], "b": []}

    def summary(tenant):
        req = urllib.request.Request(url + "studies/slow", headers={"x-api-key": key[tenant]})
        try:
            with urllib.request.urlopen(req, timeout=90) as r:
                answers[tenant].append((r.status, None, r.read()))
        except urllib.error.HTTPError as e:
            answers[tenant].append((e.code, e.headers.get("Retry-After"), e.read()))

    sent = dashboard.THREADS + 4
    threads = {t: [threading.Thread(target=summary, args=(t,)) for _ in range(sent)] for t in "ab"}

    def saturate(tenant, share):
        """``tenant``'s summaries, until every thread is held (before) or those past ``share``
        are refused (now)."""
        for t in threads[tenant]:
            t.start()
        deadline = time.monotonic() + 60
        while sum(entered.values()) < dashboard.THREADS and len(answers[tenant]) < sent - share:
            assert time.monotonic() < deadline, (entered, len(answers[tenant]))
            time.sleep(0.01)
        assert entered[tenant] == share
        for status, retry_after, body in answers[tenant]:
            assert status == 429 and int(retry_after) >= 1
            assert "dashboard requests running" in json.loads(body)["error"]

    try:
        saturate("a", dashboard.TENANT_REQUESTS)
        for path in ("session", "studies/quick"):
            status, body = get(url + path, key["c"])
            assert status == 200, (path, status, body)
        share = dashboard.THREADS // 3  # b's, busy with a: the threads among them and one more
        saturate("b", share)  # before: b held 20, and a and b every thread
        for path in ("session", "studies/quick"):
            status, body = get(url + path, key["c"])
            assert status == 200, (path, status, body)
        assert "2 tenants are busy" in json.loads(answers["b"][0][2])["error"]
        assert entered == {"a": dashboard.TENANT_REQUESTS, "b": share}  # still held
    finally:
        release.set()
        for t in threads["a"] + threads["b"]:
            t.join(90)
        server.stop()
    for tenant, held in (("a", dashboard.TENANT_REQUESTS), ("b", share)):
        assert sorted(a[0] for a in answers[tenant]) == [200] * held + [429] * (sent - held)
