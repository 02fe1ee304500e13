#!/usr/bin/python3
"""Drives headless Chromium through its DevTools protocol, as a person watching the page:
opens URL, prints `loaded`, polls the rendered text until it contains NEEDLE and prints
`seen UNIX_MS`, then saves a screenshot. With PICK, it first picks that file in the
page's "Offer a file" form (as a person would with the file dialog), presses Offer and
prints `offered`. Usage: page.py URL NEEDLE SCREENSHOT [TIMEOUT_S [PICK]]

Test harness only (tests/page.rs); needs Debian's chromium and python3-websocket.
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket


def main():
    url, needle, shot = sys.argv[1:4]
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 30.0
    pick = sys.argv[5] if len(sys.argv) > 5 else None
    profile = tempfile.mkdtemp(prefix="resagent-chromium-")
    browser = subprocess.Popen(
        ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
         "--no-first-run", "--remote-debugging-port=0", "--remote-allow-origins=*",
         f"--user-data-dir={profile}", "--window-size=1280,900", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = os.path.join(profile, "DevToolsActivePort")
        deadline = time.time() + 60
        while not (os.path.exists(port_file) and open(port_file).read().strip()):
            if time.time() > deadline:
                sys.exit("chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        port = open(port_file).read().split()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
        page = next(t for t in targets if t["type"] == "page")
        ws = websocket.create_connection(page["webSocketDebuggerUrl"], suppress_origin=True)
        ids = iter(range(1, 1 << 30))

        def call(method, **params):
            i = next(ids)
            ws.send(json.dumps({"id": i, "method": method, "params": params}))
            while True:
                answer = json.loads(ws.recv())
                if answer.get("id") == i:
                    if "error" in answer:
                        sys.exit(f"{method}: {answer['error']}")
                    return answer.get("result", {})

        call("Page.enable")
        call("Page.navigate", url=url)
        time.sleep(0.5)
        print("loaded", flush=True)
        deadline = time.time() + timeout
        if pick:
            def value(expr):
                return call("Runtime.evaluate", returnByValue=True,
                            expression=expr).get("result", {}).get("value")
            # The device list fills from the first /reports.json.
            while not value("document.getElementById('offer-device').options.length"):
                if time.time() > deadline:
                    sys.exit("the page never listed a device to offer to")
                time.sleep(0.05)
            root = call("DOM.getDocument")["root"]["nodeId"]
            node = call("DOM.querySelector", nodeId=root, selector="#pick")["nodeId"]
            call("DOM.setFileInputFiles", files=[os.path.abspath(pick)], nodeId=node)
            value("document.getElementById('offer').click()")
            print("offered", flush=True)
        while True:
            text = call("Runtime.evaluate", returnByValue=True,
                        expression="document.body ? document.body.innerText : ''")
            if needle in text.get("result", {}).get("value", ""):
                print(f"seen {int(time.time() * 1000)}", flush=True)
                break
            if time.time() > deadline:
                shown = text.get("result", {}).get("value", "")[:400].replace("\n", " | ")
                print(f"not seen; the page shows: {shown}", flush=True)
                sys.exit(1)
            time.sleep(0.05)
        time.sleep(0.6)  # the rest of the reports render
        shot_data = call("Page.captureScreenshot", format="png")["data"]
        with open(shot, "wb") as f:
            f.write(base64.b64decode(shot_data))
        print("screenshot", flush=True)
    finally:
        browser.kill()
        browser.wait()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
