"""Open tessera's report pages in headless Chromium and say, as JSON, what the browser shows.

    python browse_report.py CHROMIUM PAGE.html [PAGE.html ...]

Chromium is driven through the DevTools protocol over --remote-debugging-pipe (file
descriptors 3 and 4, NUL-separated JSON messages), so nothing but the standard library and the
browser is needed. For each page, after its load event: every <img> (complete, naturalWidth,
naturalHeight), the legends (class name and the swatch's computed colour), the class-area rows,
the SVG shapes per layer, the links (resolved hrefs) and every network request the page made
(URL scheme and URL), the index's rows (scene, status, error), the chip gallery and the answers. Printed as {"pages": {path: {...}}}.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECK = r"""
(() => {
  const imgs = [...document.images].map(i => ({
    alt: i.alt, complete: i.complete, natural_width: i.naturalWidth,
    natural_height: i.naturalHeight, scheme: i.src.split(':')[0]}));
  const legends = {};
  for (const ul of document.querySelectorAll('ul.legend')) {
    legends[ul.dataset.layer] = [...ul.querySelectorAll('li')].map(li => ({
      name: li.dataset.class,
      color: getComputedStyle(li.querySelector('.swatch')).backgroundColor}));
  }
  const areas = {};
  for (const s of document.querySelectorAll('section.stage')) {
    const rows = [...s.querySelectorAll('table.bars tr[data-class]')];
    if (rows.length) {
      areas[s.dataset.name] = rows.map(r => ({
        name: r.dataset.class,
        m2: parseFloat(r.children[1].textContent),
        percent: parseFloat(r.children[2].textContent)}));
    }
  }
  const shapes = {};
  for (const g of document.querySelectorAll('.map svg > g')) {
    shapes[g.getAttribute('class')] = g.querySelectorAll('polygon').length;
  }
  const links = [...document.querySelectorAll('a')].map(a => a.href);
  const rows = [...document.querySelectorAll('tr[data-status]')].map(r => ({
    name: r.children[0].textContent, status: r.dataset.status,
    error: r.children[4].textContent}));
  const stages = [...document.querySelectorAll('section.stage')].map(s => s.dataset.name);
  const gallery = [...document.querySelectorAll('.gallery figure')].map(f => ({
    id: f.querySelector('figcaption b').textContent,
    text: f.querySelector('figcaption').textContent,
    natural_width: f.querySelector('img').naturalWidth}));
  const answers = [...document.querySelectorAll('.answer')].map(a => a.textContent);
  return JSON.stringify({title: document.title, images: imgs, legends, areas, shapes, links, rows,
                         gallery, answers,
                         stages, text: document.body.innerText.length});
})()
"""


class Browser:
    def __init__(self, chromium):
        self.profile = tempfile.TemporaryDirectory(prefix="tessera-chromium-")
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()
        args = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-extensions", "--disable-background-networking", "--disable-sync",
            "--remote-debugging-pipe", f"--user-data-dir={self.profile.name}", "about:blank",
        ]
        # The pipe must be descriptors 3 (commands in) and 4 (replies out) in the browser.
        shell = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}'
        self.proc = subprocess.Popen(
            ["sh", "-c", shell] + args,
            pass_fds=(to_browser_r, from_browser_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.buf = b""
        self.next_id = 0
        self.events = []

    def _read(self):
        while b"\0" not in self.buf:
            chunk = os.read(self.from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, params=None, session=None):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.to_browser, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._read()
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method, session, timeout=20):
        end = time.time() + timeout
        while time.time() < end:
            for i, e in enumerate(self.events):
                if e.get("method") == method and e.get("sessionId") == session:
                    return self.events.pop(i)
            self.events.append(self._read())
        raise RuntimeError(f"no {method} within {timeout} s")

    def close(self):
        try:
            self.call("Browser.close")
        except RuntimeError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.profile.cleanup()


def browse(browser, page):
    target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"]
    browser.call("Network.enable", session=session)
    browser.call("Page.enable", session=session)
    browser.events.clear()
    url = Path(page).resolve().as_uri()
    browser.call("Page.navigate", {"url": url}, session=session)
    browser.wait_event("Page.loadEventFired", session)
    result = browser.call("Runtime.evaluate", {"expression": CHECK, "returnByValue": True},
                          session=session)
    # Let late requests (fonts, prefetches) show up before they are counted.
    browser.call("Runtime.evaluate", {
        "expression": "new Promise(r => setTimeout(r, 300))", "awaitPromise": True},
        session=session)
    requests = [e["params"]["request"]["url"] for e in browser.events
                if e.get("method") == "Network.requestWillBeSent"
                and e.get("sessionId") == session]
    out = json.loads(result["result"]["value"])
    out["requests"] = requests
    out["url"] = url
    browser.call("Target.closeTarget", {"targetId": target})
    return out


def main():
    chromium, pages = sys.argv[1], sys.argv[2:]
    browser = Browser(chromium)
    try:
        report = {"pages": {p: browse(browser, p) for p in pages}}
    finally:
        browser.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
