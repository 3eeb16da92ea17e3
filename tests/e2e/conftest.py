import os
import shutil

import pytest

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"

# Playwright's sync API runs an event loop in this thread; the ORM calls these tests make are
# ordinary blocking calls of the test itself, not inside that loop.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(scope="package")
def browser():
    # Package-scoped: Playwright's loop must be gone before the tests after these run, whose
    # requests reach the async chat view through `async_to_sync` in this thread.
    if not os.path.exists(CHROMIUM):
        pytest.skip("Chromium not installed (apt-get install chromium; .ci/run does this)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page_for(browser, live_server, mlflow_experiment):
    """A signed-in browser page for a user (each user gets their own browser context)."""
    contexts = []

    def open_as(user, password="pw-for-tests-123", viewport=None):
        context = browser.new_context(viewport=viewport or {"width": 1280, "height": 800})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15000)
        page.goto(f"{live_server.url}/chat/")
        page.get_by_label("Username").fill(user.username)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/chat/")
        return page

    yield open_as
    for context in contexts:
        context.close()
