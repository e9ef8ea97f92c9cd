#!/usr/bin/env python3
"""Checks Kaa's dashboard (`GET /ui`) in headless Chromium, driven by selenium, against live nodes.

Run by Tests/KaaNodeTests/DashboardLiveTests.swift with the interpreter of .venv-test
(tools/python-env.sh test); Chromium and its driver are Debian's (tools/install-deps.sh).

  cluster mode: the page shows every member alive and every expected model with the holders the
      node's placement table names; calls sent to the nodes show up as rates; after this script
      SIGKILLs one node (by pid) the page shows it dead without being reloaded, and shows the
      dead letter of a call that had no live holder, whose record opens from the page.
  token mode: a node with a tokens file; the page asks for a token, works once given one, and
      takes one from a `#token=` fragment (which it then removes from the address).

Every condition is polled with a generous timeout; the first that does not come true ends the
run with a message and exit status 1. Prints one `ok    NAME` line per check.
"""
import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import JavascriptException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

TIMEOUT = 120  # seconds for any one condition; a slow machine is slow, not wrong


def fail(message):
    print(f"FAIL  {message}", flush=True)
    sys.exit(1)


def ok(name, detail=""):
    print(f"ok    {name}" + (f": {detail}" if detail else ""), flush=True)


def within(seconds, condition, what):
    """Polls `condition` (returns a true value when met) every 250 ms; fails naming `what`."""
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except (JavascriptException, WebDriverException) as e:
            last = e
        time.sleep(0.25)
    fail(f"{what} (waited {seconds} s)" + (f"; last browser error: {last}" if last else ""))


def http_json(url, token=None, method="GET", body=None):
    request = urllib.request.Request(url, method=method, data=body)
    if token:
        request.add_header("Authorization", "Bearer " + token)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=20) as r:
        return json.loads(r.read())


def browser(screen):
    """Headless Chromium with a profile of its own; `close(driver)` ends it and removes the profile."""
    profile = tempfile.mkdtemp(prefix="kaa-ui-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("KAA_CHROMIUM", "/usr/bin/chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                 "--no-first-run", "--disable-extensions", "--disable-background-networking", "--force-device-scale-factor=1",
                 f"--window-size={screen}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=os.environ.get("KAA_CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.kaa_profile = profile
    # The page's own size, whatever the headless window's frame takes: a wall screen's.
    width, height = (int(v) for v in screen.split(","))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    return driver


def close(driver):
    driver.quit()
    shutil.rmtree(driver.kaa_profile, ignore_errors=True)


def js(driver, script, *args):
    return driver.execute_script(script, *args)


def members_on_page(driver):
    return js(driver, "return [...document.querySelectorAll('#members tbody tr')].map(r => [r.dataset.member, r.dataset.status])")


def check_console(driver):
    """No errors in the page's console since the last look: a script error or a blocked resource
    (the content security policy) shows up there."""
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    if severe:
        fail("the browser console has errors: " + "; ".join(e.get("message", "") for e in severe))


class Traffic(threading.Thread):
    """Sends calls of `models` round-robin to the nodes that are up, about `rate` a second,
    until stopped; counts what came back. Only for figures to show: its results are not checked,
    except that some calls were answered."""

    def __init__(self, ports, models, rate, metadata_port):
        super().__init__(daemon=True)
        self.ports, self.models, self.period = list(ports), models, 1.0 / rate
        # Any node answers for any model: every request body is made from the first node's metadata.
        self.metadata_port = metadata_port
        self.stopped = threading.Event()
        self.answered = 0
        self.failed = 0
        self.last_failure = None
        self.bodies = {}

    def body(self, model):
        if model not in self.bodies:
            meta = http_json(f"http://127.0.0.1:{self.metadata_port}/v2/models/{model}")
            inputs = []
            for i in meta["inputs"]:
                shape = [1 if d < 0 else d for d in i["shape"]] or [1]
                count = 1
                for d in shape:
                    count *= d
                value = "a b c" if i["datatype"] == "BYTES" else (False if i["datatype"] == "BOOL" else 0.5)
                inputs.append({"name": i["name"], "shape": shape, "datatype": i["datatype"], "data": [value] * count})
            self.bodies[model] = json.dumps({"inputs": inputs}).encode()
        return self.bodies[model]

    def run(self):
        n = 0
        while not self.stopped.is_set():
            # Every model through every node in turn.
            model = self.models[n % len(self.models)]
            port = self.ports[(n // len(self.models)) % len(self.ports)]
            n += 1
            try:
                http_json(f"http://127.0.0.1:{port}/v2/models/{model}/infer", method="POST", body=self.body(model))
                self.answered += 1
            except urllib.error.HTTPError as e:
                self.failed += 1
                self.last_failure = f"{model} via {port}: {e.code} {e.read()[:200]!r}"
            except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
                self.failed += 1
                self.last_failure = f"{model} via {port}: {e}"
            self.stopped.wait(self.period)


def cluster_mode(args):
    nodes = dict(item.split("=", 1) for item in args.nodes.split(","))  # name=http port
    victim_name, victim_pid = args.kill.split(":")
    victim_pid = int(victim_pid)
    expected_models = args.models.split(",")
    first = f"http://127.0.0.1:{args.port}"

    traffic = Traffic([int(p) for p in nodes.values()], args.traffic.split(","), rate=args.rate, metadata_port=args.port)
    traffic.start()

    driver = browser(args.screen)
    try:
        t0 = time.monotonic()
        driver.get(first + "/ui")
        within(TIMEOUT, lambda: js(driver, "return Number(document.body.dataset.updates || 0)") >= 1, "the page never finished a first update")
        ok("page_loads", f"first update {time.monotonic() - t0:.1f} s after opening {first}/ui")

        within(TIMEOUT, lambda: sorted(members_on_page(driver)) == sorted([n, "alive"] for n in nodes),
               f"the page does not show {sorted(nodes)} alive; it shows {members_on_page(driver)}")
        ok("members_alive", ", ".join(sorted(nodes)))

        def holders_match():
            table = http_json(first + "/kaa/v1/placement")
            want = {}
            for s in table["snapshots"]:
                if s["name"] in expected_models:
                    want[f'{s["name"]}@{s["version"]}'] = ",".join(h["name"] for h in s["holders"])
            shown = dict(js(driver, """return [...document.querySelectorAll('#models tr[data-model] .version')].map(v =>
                [v.closest('tr').dataset.model + '@' + v.dataset.version, v.dataset.holders])"""))
            missing = [m for m in expected_models if not any(k.startswith(m + "@") for k in want)]
            if missing:
                return False
            return all(shown.get(k) == v and v for k, v in want.items()) and want
        placed = within(TIMEOUT, holders_match,
                        "the page's models and holders never matched the node's placement table for " + ", ".join(expected_models))
        ok("models_with_holders", "; ".join(f"{k} on {v}" for k, v in sorted(placed.items())))

        within(TIMEOUT, lambda: js(driver, "return document.querySelectorAll('#chart-node-rate path').length") >= len(nodes)
               and float(js(driver, "return document.getElementById('kpi-rate').firstChild.textContent").replace(",", "") or 0) > 0,
               f"the calls being sent ({traffic.answered} answered so far) never showed up as a rate and a line per node")
        ok("rates_drawn", "calls/s " + js(driver, "return document.getElementById('kpi-rate').textContent"))
        for item in args.alias or []:
            model, alias, version = item.split(":")
            within(TIMEOUT, lambda: f"{alias}→{version}" in js(driver, "const r = document.querySelector(`#models tr[data-model='${arguments[0]}']`); "
                                                               "return r ? [...r.querySelectorAll('.alias')].map(a => a.textContent) : []", model),
                   f"the page never showed {model}'s alias {alias} → {version}")
            ok("alias_shown", f"{model} {alias}→{version}")
        if args.warmup:
            time.sleep(args.warmup)  # only for a picture with more history in its charts
        check_console(driver)

        letters_before = js(driver, "return [...document.querySelectorAll('#dead-letters tr')].map(r => r.dataset.deadLetter)")
        # From here on the page must change without a reload: a reload would drop this marker.
        js(driver, "window.__kaaNotReloaded = true")
        before = js(driver, "return Number(document.body.dataset.updates)")
        os.kill(victim_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        within(TIMEOUT, lambda: [victim_name, "dead"] in members_on_page(driver),
               f"the page never showed {victim_name} dead after its SIGKILL; it shows {members_on_page(driver)}")
        if js(driver, "return window.__kaaNotReloaded === true") is not True:
            fail("the page was reloaded to show the dead node")
        updates = js(driver, "return Number(document.body.dataset.updates)") - before
        ok("killed_node_dead", f"{victim_name} (pid {victim_pid}) shown dead {time.monotonic() - killed_at:.1f} s after SIGKILL, "
                               f"after {updates} updates, no reload")

        dead_model = args.dead_model
        new_letter = """return [...document.querySelectorAll(`#dead-letters tr[data-model='${arguments[0]}']`)]
                        .map(r => r.dataset.deadLetter).find(id => !arguments[1].includes(id)) || null"""
        row = within(TIMEOUT, lambda: js(driver, new_letter, dead_model, letters_before),
                     f"no dead letter of {dead_model} (held only by {victim_name}) ever showed on the page "
                     f"(calls sent: {traffic.answered} answered, {traffic.failed} failed; last failure: {traffic.last_failure})")
        ok("dead_letter_listed", f"{row} for {dead_model}")
        within(TIMEOUT, lambda: js(driver, "return document.getElementById('tile-under').dataset.level") == "bad",
               "the under-replicated tile never turned red")
        ok("under_replicated_shown", js(driver, "return document.getElementById('kpi-under').textContent") + " under-replicated")

        driver.find_element(By.CSS_SELECTOR, f"#dead-letters a[data-record='{row}']").click()
        record = within(TIMEOUT, lambda: (lambda t: json.loads(t) if t.startswith("{") else None)(
            js(driver, "return document.getElementById('record-body').textContent")), "the dead letter's record never opened")
        if record.get("id") != row or record.get("model") != dead_model:
            fail(f"the record opened is not {row} of {dead_model}: {json.dumps(record)[:300]}")
        ok("dead_letter_record", f"reason {record.get('reason')}, accepted by {record.get('accepted_by')}")
        driver.find_element(By.ID, "record-close").click()

        # A few more updates so the charts show the minutes around the kill, then the picture.
        seen = js(driver, "return Number(document.body.dataset.updates)")
        within(TIMEOUT, lambda: js(driver, "return Number(document.body.dataset.updates)") >= seen + 2, "the page stopped updating")
        check_console(driver)
        os.makedirs(os.path.dirname(os.path.abspath(args.screenshot)), exist_ok=True)
        if not driver.save_screenshot(args.screenshot):
            fail(f"could not save the screenshot to {args.screenshot}")
        ok("screenshot", args.screenshot)
    finally:
        traffic.stopped.set()
        close(driver)
    print(f"traffic: {traffic.answered} calls answered, {traffic.failed} failed (the killed node's and the dead letters')")


def token_mode(args):
    url = f"http://127.0.0.1:{args.port}/ui"
    driver = browser(args.screen)
    try:
        driver.get(url)
        within(TIMEOUT, lambda: js(driver, "return !document.getElementById('token-dialog').hidden"),
               "without a token the page never asked for one")
        why = js(driver, "return document.getElementById('token-why').textContent")
        if "read" not in why:
            fail(f"the token prompt does not name the scope: {why}")
        ok("asks_for_token", why[:100])
        # The console has the refused calls (401) so far; what it says after a token is given is checked below.
        refused = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE" and "401" not in e.get("message", "")]
        if refused:
            fail("the browser console has errors besides the refused calls: " + "; ".join(e.get("message", "") for e in refused))
        # The node's own read routes refuse the page's calls without one.
        try:
            http_json(f"http://127.0.0.1:{args.port}/kaa/v1/stats/cluster")
            fail("/kaa/v1/stats/cluster answered without a token")
        except urllib.error.HTTPError as e:
            if e.code != 401:
                fail(f"/kaa/v1/stats/cluster without a token: {e.code}, not 401")
        driver.find_element(By.ID, "token-input").send_keys(args.token)
        driver.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
        within(TIMEOUT, lambda: [args.node, "alive"] in members_on_page(driver), "with the token typed in, the page never showed the node")
        ok("token_typed_in")
        # Polls run one after another, so every refused one has been logged by now: drain them.
        refused = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE" and "401" not in e.get("message", "")]
        if refused:
            fail("the browser console has errors besides the refused calls: " + "; ".join(e.get("message", "") for e in refused))

        # A `#token=` fragment, opened afresh in a tab that has none stored.
        js(driver, "sessionStorage.clear()")
        driver.get("about:blank")
        driver.get(url + "#token=" + args.token)
        within(TIMEOUT, lambda: [args.node, "alive"] in members_on_page(driver) and js(driver, "return document.getElementById('token-dialog').hidden"),
               "with #token= the page never showed the node")
        if "token=" in driver.current_url:
            fail(f"the page left the token in its address: {driver.current_url}")
        ok("token_from_fragment", "and removed from the address")
        check_console(driver)
    finally:
        close(driver)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["cluster", "token"], required=True)
    p.add_argument("--port", type=int, required=True, help="HTTP port of the node whose /ui is opened")
    p.add_argument("--nodes", help="cluster mode: name=port,... of every node")
    p.add_argument("--models", help="cluster mode: models the page must show with their holders")
    p.add_argument("--traffic", help="cluster mode: models to send calls of while the page is open")
    p.add_argument("--rate", type=float, default=20, help="cluster mode: calls a second to send")
    p.add_argument("--kill", help="cluster mode: NAME:PID of the node to SIGKILL")
    p.add_argument("--dead-model", help="cluster mode: a model only the killed node holds (its calls become dead letters)")
    p.add_argument("--screenshot", help="cluster mode: where to save the PNG")
    p.add_argument("--token", help="token mode: a token with scope read")
    p.add_argument("--node", help="token mode: the node's name")
    p.add_argument("--alias", action="append", help="cluster mode: MODEL:ALIAS:VERSION the page must show (repeatable)")
    p.add_argument("--warmup", type=float, default=0, help="cluster mode: seconds of calls before the kill (for a fuller picture)")
    p.add_argument("--screen", default="1920,1080", help="the page's size in CSS pixels: WIDTH,HEIGHT")
    args = p.parse_args()
    if args.mode == "cluster":
        for required in ("nodes", "models", "traffic", "kill", "dead_model", "screenshot"):
            if not getattr(args, required):
                p.error(f"cluster mode needs --{required.replace('_', '-')}")
        cluster_mode(args)
    else:
        if not args.token or not args.node:
            p.error("token mode needs --token and --node")
        token_mode(args)


if __name__ == "__main__":
    main()
