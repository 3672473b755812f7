"""The web console in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven by Selenium) on
the session's stack: a wrong key gets the login error; the master key signs in, creates a key for a new tenant
and revokes it; a batch's page shows its progress until it completes; a tenant key sees only its own tenant's
data and no admin forms; a chat request shows up in the overview's live charts. Every page visited is kept as a
screenshot in test-artifacts/console/<page>.png."""

import json
import shutil
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.conftest import MASTER_KEY, MODEL

pytestmark = pytest.mark.integration
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}
WAIT_S = 120.0


@pytest.fixture(scope="module")
def browser():
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(binary):
            pytest.fail(f"{binary} is not installed: apt-get install chromium chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # As root (CI) Chromium needs --no-sandbox; /dev/shm is small in containers.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def tenant():
    return f"console-{uuid.uuid4().hex[:8]}"


def by(kind: str, value: str):
    from selenium.webdriver.common.by import By

    return getattr(By, kind), value


def shot(driver, name: str) -> None:
    """The whole page: the window grown to the document's height for the screenshot."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, max(1000, min(int(height) + 40, 6000)))
    assert driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    driver.set_window_size(1400, 1000)


def wait_until(condition, what: str, timeout_s: float = WAIT_S, every_s: float = 0.5):
    """`condition()`'s first truthy value; a page that reloads under us is read again."""
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = condition()
        except WebDriverException:  # stale or missing while the page refreshes itself (Chromium also says "Node
            value = None  # with given id does not belong to the document" for a node its reload replaced)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every_s)


def click_through(element, what: str) -> None:
    """Click what leads to another page and wait until that page replaced this one: a click returns before the
    navigation it starts has finished, so a read straight after it can still see the old page."""
    from selenium.common.exceptions import WebDriverException

    element.click()

    def replaced() -> bool:
        try:
            element.is_enabled()
        except WebDriverException:  # stale; or, caught mid-navigation, Chromium's "Node with given id does not
            return True  # belong to the document" (an unknown error to Selenium's own staleness_of, which raised)
        return False

    wait_until(replaced, what)


def sign_in(driver, base_url: str, key: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{base_url}/console/login")
    driver.find_element(*by("ID", "key")).send_keys(key)
    click_through(driver.find_element(*by("ID", "sign-in")), "the page after signing in")


def key_row(driver, key_id: str):
    return driver.find_element(*by("CSS_SELECTOR", f'#keys tr[data-key-id="{key_id}"]'))


def test_strangers_go_to_the_login_page_and_a_wrong_key_is_refused(browser, base_url):
    browser.delete_all_cookies()
    browser.get(f"{base_url}/console/keys")
    assert browser.current_url == f"{base_url}/console/login"
    shot(browser, "login")
    sign_in(browser, base_url, "sk-llmserve-not-a-key")
    error = browser.find_element(*by("ID", "login-error"))
    assert "incorrect API key" in error.text and browser.current_url == f"{base_url}/console/login"
    shot(browser, "login-wrong-key")
    login = f"{base_url}/console/login"
    refused = httpx.post(login, data={"key": "sk-llmserve-not-a-key"}, headers={"origin": base_url}, timeout=30)
    assert refused.status_code == 401 and "set-cookie" not in refused.headers
    elsewhere = httpx.post(login, data={"key": MASTER_KEY}, headers={"origin": "http://evil.example"}, timeout=30)
    assert elsewhere.status_code == 403 and "set-cookie" not in elsewhere.headers  # login CSRF refused


def test_the_master_key_creates_a_key_for_a_new_tenant_and_revokes_it(browser, base_url, tenant):
    sign_in(browser, base_url, MASTER_KEY)
    assert browser.current_url == f"{base_url}/console"
    click_through(browser.find_element(*by("ID", "nav-keys")), "the keys page")
    form = browser.find_element(*by("ID", "create-key"))
    form.find_element(*by("NAME", "name")).send_keys("console-made")
    form.find_element(*by("NAME", "tenant")).send_keys(tenant)
    form.find_element(*by("NAME", "rpm")).send_keys("120")
    click_through(form.find_element(*by("ID", "create-key-submit")), "the page with the new key")

    created = browser.find_element(*by("ID", "created"))
    key, key_id = browser.find_element(*by("ID", "new-key")).text, created.get_attribute("data-key-id")
    assert key.startswith("sk-llmserve-") and tenant in created.text
    row = key_row(browser, key_id)
    assert row.get_attribute("data-status") == "active" and tenant in row.text and "120 req/min" in row.text
    assert browser.find_element(*by("CSS_SELECTOR", f'#tenants tr[data-tenant="{tenant}"]'))
    shot(browser, "keys-created")
    as_new = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{base_url}/v1/models", headers=as_new, timeout=30).status_code == 200

    key_row(browser, key_id).find_element(*by("CSS_SELECTOR", "button.revoke")).click()
    browser.switch_to.alert.accept()  # "Revoke key ...?"
    wait_until(lambda: key_row(browser, key_id).get_attribute("data-status") == "revoked", "the key shown revoked")
    assert f"Revoked {key_id}" in browser.find_element(*by("ID", "notice")).text
    shot(browser, "keys-revoked")
    assert httpx.get(f"{base_url}/v1/models", headers=as_new, timeout=30).status_code == 401


def test_a_batch_page_shows_its_progress_until_it_completes(browser, base_url):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=120)
    lines = []
    for i in range(6):
        messages = [{"role": "user", "content": f"Count from {i} to {i + 9}."}]
        body = {"model": MODEL, "temperature": 0, "max_tokens": 24, "messages": messages}
        lines.append(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}))
    uploaded = client.files.create(file=("console.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    sign_in(browser, base_url, MASTER_KEY)
    browser.get(f"{base_url}/console/batches")
    row = f'#batches tr[data-batch-id="{batch.id}"]'
    assert wait_until(lambda: uploaded.id in browser.find_element(*by("CSS_SELECTOR", row)).text, "the batch listed")
    shot(browser, "batches")
    # The list refreshes itself while a batch runs: read the link, then follow it.
    browser.get(wait_until(lambda: browser.find_element(*by("CSS_SELECTOR", f"{row} a")).get_attribute("href"), "link"))

    seen: list[tuple[str, str]] = []  # (status, done/total) as the page showed them, refreshing itself

    def finished():
        status = browser.find_element(*by("ID", "batch-status")).text
        counts = browser.find_element(*by("ID", "batch-counts")).text
        if not seen or seen[-1] != (status, counts):
            seen.append((status, counts))
            if len(seen) == 1 or status == "in_progress":
                shot(browser, "batch-running")
        return status in ("completed", "failed", "expired", "cancelled") and status

    assert wait_until(finished, f"batch {batch.id} to complete", every_s=0.3) == "completed", seen
    assert seen[-1] == ("completed", "6/6"), seen
    assert seen[0][0] != "completed", f"the page never showed the batch before it completed: {seen}"
    done = [int(c.split("/")[0]) for _, c in seen]
    assert done == sorted(done), seen  # progress only grows
    roles = {r.get_attribute("data-role") for r in browser.find_elements(*by("CSS_SELECTOR", "#batch-files tr"))}
    assert {"input", "output"} <= roles
    assert not browser.find_elements(*by("ID", "refreshing"))  # done: the page stopped refreshing itself
    shot(browser, "batch-completed")


def test_a_tenant_key_sees_only_its_own_tenant_read_only(browser, base_url, tenant):
    other = f"{tenant}-ro"
    made = httpx.post(f"{base_url}/admin/keys", json={"name": "reader", "tenant": other}, headers=ADMIN, timeout=30)
    assert made.status_code == 200, made.text
    key = made.json()["key"]
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "rag": False}
    for who, conversation in ((key, "tenant-talk"), (MASTER_KEY, "admin-talk")):
        said = httpx.post(
            f"{base_url}/v1/chat/completions", json={**chat, "conversation_id": conversation},
            headers={"Authorization": f"Bearer {who}"}, timeout=120,
        )  # fmt: skip
        assert said.status_code == 200, said.text
    handbook = {
        "collection": "handbook",
        "documents": [{"source": "notes/console.md", "text": "The console is read-only."}],
    }
    ingested = httpx.post(
        f"{base_url}/v1/rag/documents", json=handbook, headers={"Authorization": f"Bearer {key}"}, timeout=120
    )
    assert ingested.status_code == 200, ingested.text

    # The admin sees both conversations first (and keeps screenshots of the pages a tenant key may not see).
    sign_in(browser, base_url, MASTER_KEY)
    for page, name in (("/conversations", "conversations"), ("/usage", "usage"), ("/providers", "providers")):
        browser.get(f"{base_url}/console{page}")
        shot(browser, name)
    browser.get(f"{base_url}/console/conversations")
    listed = {
        r.get_attribute("data-conversation-id")
        for r in browser.find_elements(*by("CSS_SELECTOR", "tr[data-conversation-id]"))
    }
    assert {"tenant-talk", "admin-talk"} <= listed
    click_through(
        browser.find_element(*by("CSS_SELECTOR", 'tr[data-conversation-id="tenant-talk"] a')), "the conversation"
    )
    assert "Hi" in browser.find_element(*by("ID", "messages")).text
    shot(browser, "conversation")
    browser.get(f"{base_url}/console/rag")
    collection = f'#collections tr[data-collection="handbook"][data-tenant="{other}"]'
    assert browser.find_element(*by("CSS_SELECTOR", collection))
    shot(browser, "rag")
    click_through(browser.find_element(*by("CSS_SELECTOR", f"{collection} a")), "the collection")
    assert "notes/console.md" in browser.find_element(*by("ID", "documents")).text
    shot(browser, "rag-documents")

    sign_in(browser, base_url, key)
    assert browser.find_element(*by("ID", "who")).get_attribute("data-admin") == "false"
    assert not browser.find_elements(*by("ID", "nav-providers"))
    for page, name in (("", "tenant-overview"), ("/keys", "tenant-keys"), ("/usage", "tenant-usage"),
                       ("/batches", "tenant-batches"), ("/conversations", "tenant-conversations"),
                       ("/rag", "tenant-rag")):  # fmt: skip
        browser.get(f"{base_url}/console{page}")
        shot(browser, name)
        source = browser.page_source
        assert "admin-talk" not in source and MASTER_KEY not in source, page
        assert not browser.find_elements(*by("CSS_SELECTOR", "form.grid, button.revoke, form.picker")), page
    browser.get(f"{base_url}/console/keys")
    keys = {r.get_attribute("data-name") for r in browser.find_elements(*by("CSS_SELECTOR", "#keys tr[data-name]"))}
    assert keys == {"reader"}
    browser.get(f"{base_url}/console/conversations")
    listed = {
        r.get_attribute("data-conversation-id")
        for r in browser.find_elements(*by("CSS_SELECTOR", "tr[data-conversation-id]"))
    }
    assert listed == {"tenant-talk"}
    browser.get(f"{base_url}/console/rag/handbook")
    assert "notes/console.md" in browser.find_element(*by("ID", "documents")).text
    browser.get(f"{base_url}/console/providers")
    assert "admin key" in browser.find_element(*by("ID", "error-message")).text
    shot(browser, "tenant-providers-refused")
    browser.get(f"{base_url}/console/batches?tenant=admin")
    assert "own tenant" in browser.find_element(*by("ID", "error-message")).text

    # The admin actions refuse a tenant key's session (the browser has no form for them: post directly).
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
    with httpx.Client(base_url=base_url, cookies=cookies, headers={"origin": base_url}, timeout=30) as session:
        assert session.get("/console/keys").status_code == 200
        refused = {
            "/console/keys": {"name": "x", "tenant": other},
            "/console/keys/anything/revoke": {},
            f"/console/tenants/{other}/limits": {"rpm": "1"},
        }
        for path, form in refused.items():
            answer = session.post(path, data=form)
            assert answer.status_code == 403 and "admin key" in answer.text, path  # refused for the key, not origin
    click_through(browser.find_element(*by("ID", "sign-out")), "the page after signing out")
    assert browser.current_url.startswith(f"{base_url}/console/login")


def test_a_chat_request_appears_in_the_live_charts(browser, base_url):
    sign_in(browser, base_url, MASTER_KEY)
    panel = browser.find_element(*by("ID", "live"))
    assert panel.get_attribute("data-src")

    def numbers() -> tuple[int, int, int]:
        requests = int(browser.find_element(*by("ID", "stat-requests")).text)
        ttft = int(browser.find_element(*by("CSS_SELECTOR", "#chart-ttft svg")).get_attribute("data-points"))
        refreshed = int(browser.find_element(*by("ID", "live")).get_attribute("data-refreshed") or 0)
        return requests, ttft, refreshed

    requests, points, refreshed = numbers()
    wait_until(lambda: numbers()[2] > refreshed, "the live panel to refresh itself", timeout_s=15)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "rag": False}
    answered = httpx.post(f"{base_url}/v1/chat/completions", json=body, headers=ADMIN, timeout=120)
    assert answered.status_code == 200, answered.text
    after = wait_until(
        lambda: (n := numbers())[0] > requests and n[1] > points and n, "the request in the charts", timeout_s=30
    )
    assert after[0] >= requests + 1 and after[1] >= points + 1
    assert browser.find_elements(*by("CSS_SELECTOR", "#chart-throughput svg circle.pt"))
    assert browser.current_url == f"{base_url}/console"  # updated in place, not by reloading
    shot(browser, "overview")
