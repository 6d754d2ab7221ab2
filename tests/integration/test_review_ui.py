"""The review form in the Prefect UI: a headless Chromium opens the paused run's page on a
local ``prefect server``, presses Resume and finds the review form with its description.

Chromium (Debian package ``chromium``) is installed by ``make resources`` when apt-get is
available as root. Set ``LABEL_PIPELINE_UI_SCREENSHOT`` to a PNG path to keep the
screenshot of the form.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from chromium import CHROMIUM, SKIP_REASON, Browser
from review_fixtures import LABELS, WORDS, tiny_csv

from label_pipeline.testing import (
    free_port,
    local_prefect_server,
    make_tiny_bert,
    stop_process_group,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _post(url: str, body: dict) -> object:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _paused_run(api: str, flow: subprocess.Popen, log: Path, timeout_s: float = 300) -> str:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        runs = _post(
            f"{api}/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}}
        )
        if runs:
            return runs[0]["id"]
        if flow.poll() is not None:
            raise AssertionError(f"the flow ended without pausing:\n{log.read_text()[-3000:]}")
        time.sleep(1)
    raise AssertionError("the flow run did not pause")


@pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)
def test_paused_run_shows_the_review_form_in_the_ui(tmp_path):
    root = Path(__file__).resolve().parents[2]
    encoder = make_tiny_bert(tmp_path / "enc", "base", corpus=[" ".join(WORDS.values()), *LABELS])
    config = {
        "store": str(tmp_path / "store"),
        "reports_dir": str(tmp_path / "reports"),
        "ingest": {"path": str(tiny_csv(tmp_path / "tiny.csv"))},
        "split": {"slice_sizes": [8]},
        "zero_shot": {"backend": "embedding", "embedding_model": str(encoder)},
        "train": {"methods": ["naive_bayes"], "use_pseudo": True},
        "review": {"after": "zero_shot", "timeout_s": 600, "poll_interval_s": 2},
        "augment": {"enabled": False},
        "adapt": {"enabled": False},
        "quality": {"enabled": False},
        "suggest": {"enabled": False},
        "report": {"enabled": False},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api",  # what the UI in the browser calls
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        HF_HUB_OFFLINE="1",
    )
    flow = browser = None
    log = tmp_path / "flow.log"
    with local_prefect_server(env=env, port=port, log_path=tmp_path / "server.log") as api:
        try:
            with open(log, "w") as fh:
                flow = subprocess.Popen(
                    [sys.executable, "-m", "flows.label_pipeline", "--config", "config.json"],
                    cwd=tmp_path,
                    env={**env, "PREFECT_API_URL": api, "PYTHONPATH": str(root)},
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            run_id = _paused_run(api, flow, log)
            browser = Browser(tmp_path / "chromium-profile")
            browser.call("Page.enable")
            ui = api.removesuffix("/api")
            browser.call("Page.navigate", url=f"{ui}/runs/flow-run/{run_id}")
            # the paused run's page offers Resume; it opens the form saved by pause_flow_run
            browser.wait_for(
                "[...document.querySelectorAll('button')].some(b => b.innerText.trim() === 'Resume')"
            )
            browser.js(
                "[...document.querySelectorAll('button')]"
                ".find(b => b.innerText.trim() === 'Resume').click()"
            )
            browser.wait_for("document.body.innerText.includes('Review the zero-shot')")
            browser.wait_for(
                "[...document.querySelectorAll('[role=dialog] button')]"
                ".some(b => b.innerText.trim() === 'Submit')"
            )
            text = browser.text()
            shot = browser.call("Page.captureScreenshot", format="png")
            target = Path(os.environ.get("LABEL_PIPELINE_UI_SCREENSHOT") or tmp_path / "form.png")
            target.write_bytes(base64.b64decode(shot["data"]))
            assert target.stat().st_size > 10_000
            for field in ("Threshold", "Top K", "Reject Ids", "Accept", "Comment"):
                assert field.lower() in text.lower(), (field, text[-3000:])
            assert "Rule chosen on the validation split" in text
        finally:
            if browser is not None:
                browser.close()
            if flow is not None:
                stop_process_group(flow, wait_s=20)
