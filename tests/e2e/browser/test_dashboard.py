"""The web dashboard at ``/``, in headless Chromium against a real ``traind serve``.

One service per test, as a user would meet it: the page loads without a console error
and without a request leaving 127.0.0.1; a dropped file appears in the queue and its
progress bar moves; the loss plot gains points as steps pass; a rejected drop shows its
reason; pause and resume from the page change the service's state (checked through
``/v1/status``, not the page); an upload from the page is queued; the read-only page has
no enabled action; the live stream comes back by itself after the service restarts, and
what it then shows equals a fresh history. Screenshots at desktop and phone widths go to
``build/screenshots`` (not committed)."""

from __future__ import annotations

import json

from conftest import wait_for
from selenium.webdriver.common.by import By

from browser.conftest import (
    DESKTOP,
    PHONE,
    assert_only_loopback,
    console_errors,
    requested_urls,
    screenshot,
    wait_css,
)
from tests.corpus import make_drops

TOKEN = "dashboard-test-token-0123456789"
BAD = '{"text": "fine"}\nnot json\n'


def page_value(page, script: str):
    return page.execute_script(f"return {script}")


def enabled_actions(page) -> list[str]:
    return page_value(
        page,
        "[...document.querySelectorAll('button, input')]"
        ".filter(e => e.classList.contains('action') && !e.disabled)"
        ".map(e => e.id || e.textContent)",
    )


def train_loss_points(page) -> int:
    """Points of the drawn train-loss line (what the user sees, not the page's data)."""
    return page_value(
        page,
        "(document.querySelector('#plot-loss polyline[data-series=\"train_loss\"]')"
        " || {points: {numberOfItems: 0}}).points.numberOfItems",
    )


def queue_row(page, name: str) -> dict | None:
    return page_value(
        page,
        f"""(() => {{
            const row = document.querySelector('#queue-rows tr[data-name={json.dumps(name)}]');
            return row && {{state: row.dataset.state, text: row.textContent}};
        }})()""",
    )


def progress(page) -> float:
    return float(page_value(page, "document.getElementById('file-progress').value"))


def live_equals_history(page, service) -> list[int]:
    """Once the page has every event of the log, the train-loss steps it grew live are those
    of a fresh ``/v1/history``: nothing missed, nothing twice. Returns them."""
    history = service.get("/v1/history?points=10000").json()
    wait_for(
        lambda: page_value(page, "window.traindPage.lastId") >= history["last_event_id"],
        timeout=20,
        what="the page to reach the event log's end",
    )
    live = page_value(page, "window.traindPage.history.series.train_loss.step")
    assert live == history["series"]["train_loss"]["step"]
    return live


def click(page, element_id: str) -> None:
    page.find_element(By.ID, element_id).click()


def service_state(service) -> str | None:
    return (service.status() or {}).get("state")


def test_the_dashboard_follows_training_and_steers_it(tmp_path, service_factory, page):
    drops = make_drops(tmp_path / "drops")
    big = tmp_path / "big.jsonl"  # long enough to watch its progress bar move
    big.write_text(drops[0].read_text() * 6)
    service = service_factory(
        TRAIND_SERVER__TOKEN=TOKEN, TRAIND_TRAIN__EPOCHS_PER_FILE="10"
    ).start()

    page.get(service.url + "/")
    wait_css(page, "#queue-rows")
    wait_for(lambda: page_value(page, "window.traindPage.mode") == "live", timeout=10, what="live")

    # Without a token: read-only, and it says so.
    assert enabled_actions(page) == []
    assert page.find_element(By.ID, "readonly-note").is_displayed()

    # A drop appears in the queue, and its progress bar moves as it trains.
    service.drop(big)
    wait_for(lambda: queue_row(page, "big.jsonl"), timeout=20, what="big.jsonl in the queue")
    wait_for(
        lambda: page_value(page, "document.getElementById('state').dataset.state") == "training",
        timeout=30,
        what="the page to say training",
    )
    first = wait_for(lambda: progress(page) > 0 and progress(page), timeout=60, what="progress")
    wait_for(lambda: progress(page) > first, timeout=60, what="the progress bar to move")
    # The loss plot gains points as steps pass (a progress event every 5 steps here).
    points = wait_for(lambda: train_loss_points(page), timeout=30, what="a loss point")
    wait_for(lambda: train_loss_points(page) > points, timeout=60, what="more loss points")

    # A rejected drop shows its reason.
    bad = tmp_path / "bad.jsonl"
    bad.write_text(BAD)
    service.drop(bad)
    rejected = wait_for(
        lambda: (row := queue_row(page, "bad.jsonl")) and row["state"] == "rejected" and row,
        timeout=30,
        what="the rejection",
    )
    assert "line 2" in rejected["text"] and "not valid JSON" in rejected["text"]

    # With the token: pause and resume from the page, as the service itself reports.
    page.find_element(By.ID, "token-input").send_keys(TOKEN)
    click(page, "token-use")
    assert {"pause", "resume", "save", "export", "upload", "rollback"} <= set(enabled_actions(page))
    click(page, "pause")
    wait_for(lambda: service_state(service) == "paused", timeout=30, what="paused")
    wait_for(
        lambda: page_value(page, "document.getElementById('state').dataset.state") == "paused",
        timeout=10,
        what="the page to say paused",
    )
    screenshot(page, "dashboard-paused", **DESKTOP)
    click(page, "resume")
    wait_for(lambda: service_state(service) in ("training", "idle"), timeout=30, what="resumed")

    # An upload from the page is queued, and the page says so.
    upload = tmp_path / "uploaded.jsonl"
    upload.write_text(drops[1].read_text())
    page.find_element(By.ID, "upload-file").send_keys(str(upload))
    click(page, "upload")
    result = wait_for(
        lambda: (
            "queued as file #" in (text := page.find_element(By.ID, "action-result").text) and text
        ),
        timeout=30,
        what="the upload's result",
    )
    assert result.startswith("uploaded.jsonl: queued as file #")
    queued = [f for f in service.files() if f.name.startswith("upload-")]
    assert len(queued) == 1 and f"#{queued[0].id}" in result

    # Everything trains; then the page's live series equal a fresh history, exactly.
    service.wait_done(2, timeout=180)
    wait_for(lambda: service_state(service) == "idle", timeout=30, what="idle")
    live = live_equals_history(page, service)
    wait_for(lambda: train_loss_points(page) == len(live), timeout=5, what="the plot drawn")
    screenshot(page, "dashboard", **DESKTOP)
    screenshot(page, "dashboard", **PHONE)
    # At phone width the page fits: only the table scrolls sideways, inside its box.
    assert page_value(page, "[innerWidth, document.documentElement.scrollWidth]") == [390, 390]

    # A reload keeps the token (this tab's session) and shows the same history.
    page.refresh()
    wait_for(lambda: page_value(page, "window.traindPage.mode") == "live", timeout=10, what="live")
    wait_for(lambda: train_loss_points(page) == len(live), timeout=10, what="the history again")
    assert "pause" in enabled_actions(page)

    # Retry of the rejected file from its row: checked again, and rejected again.
    page.find_element(By.CSS_SELECTOR, "#queue-rows tr[data-name='bad.jsonl'] button").click()
    wait_for(
        lambda: len([f for f in service.files() if f.name == "bad.jsonl"]) == 2,
        timeout=30,
        what="the rejected file checked again",
    )
    wait_for(
        lambda: (
            len(page.find_elements(By.CSS_SELECTOR, "#queue-rows tr[data-name='bad.jsonl']")) == 2
        ),
        timeout=10,
        what="both records of it in the queue",
    )

    # Roll back to gold, through its confirmation: the service rolls back, and the loss
    # plot marks it and keeps only the steps up to gold.
    gold_step = service.get("/v1/gold").json()["gold"]["step"]
    click(page, "rollback")
    assert page.find_element(By.ID, "confirm-rollback").is_displayed()
    assert f"step {gold_step}" in page.find_element(By.ID, "confirm-text").text
    click(page, "confirm-ok")
    rolled = wait_for(lambda: service.events("rolled_back_to_gold"), timeout=30, what="rollback")
    assert rolled[0]["gold_step"] == gold_step
    wait_for(
        lambda: page.find_elements(By.CSS_SELECTOR, "#plot-loss [data-kind='rollback']"),
        timeout=15,
        what="the rollback marked",
    )
    steps = page_value(page, "window.traindPage.history.series.train_loss.step")
    assert steps and max(steps) <= gold_step
    assert_only_loopback(requested_urls(page), service.port)


def test_the_read_only_page_offers_no_action(tmp_path, service_factory, page):
    """No token entered: every action is disabled, the queue's row buttons included, and
    the page says why; the stream reconnects by itself when the service comes back."""
    drops = make_drops(tmp_path / "drops")
    service = service_factory(TRAIND_SERVER__TOKEN=TOKEN).start()
    service.drop(drops[0])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(BAD)
    service.drop(bad)
    service.wait_done(1)

    page.get(service.url + "/")
    wait_for(lambda: queue_row(page, "bad.jsonl"), timeout=20, what="the queue")
    retry = page.find_element(By.CSS_SELECTOR, "#queue-rows tr[data-name='bad.jsonl'] button")
    assert retry.text == "Retry" and not retry.is_enabled()
    assert enabled_actions(page) == []
    assert "Read-only" in page.find_element(By.ID, "readonly-note").text
    screenshot(page, "dashboard-read-only", **PHONE)
    # Every control has a name a screen reader can say, and is in the tab order.
    unnamed = page_value(
        page,
        """[...document.querySelectorAll('button, input')].filter(e =>
            !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
            && !e.textContent.trim() || e.tabIndex < 0).map(e => e.outerHTML)""",
    )
    assert unnamed == []
    page.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
    )
    assert page_value(page, "matchMedia('(prefers-color-scheme: dark)').matches")
    background = page_value(page, "getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(13, 17, 23)"  # the dark palette's --bg
    screenshot(page, "dashboard-dark", **DESKTOP)
    page.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})

    # The service restarts: the page notices, comes back live by itself, and continues
    # the stream after the last event it had (Last-Event-ID): nothing missed or doubled.
    assert service.terminate() == 0
    wait_for(
        lambda: page_value(page, "window.traindPage.mode") in ("reconnecting", "polling"),
        timeout=30,
        what="the page to notice",
    )
    service.start()
    wait_for(lambda: page_value(page, "window.traindPage.mode") == "live", timeout=60, what="live")
    # The browser logs each request the outage refused, and nothing else.
    outage = [e["message"] for e in console_errors(page)]
    assert all(service.url in m and "ERR_CONNECTION" in m for m in outage), outage
    service.drop(drops[1])
    service.wait_done(2)
    live = live_equals_history(page, service)
    assert live[-1] == service.files()[-1].end_step
    assert_only_loopback(requested_urls(page), service.port)
