"""Hardened defaults: security headers, TLS settings, docs served locally, NUL-safe filters."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.django_db


def test_every_page_carries_a_content_security_policy(client, admin_client):
    for response in (
        client.get("/accounts/login/"),
        admin_client.get("/chat/"),
        admin_client.get("/admin/"),
        client.get("/api/docs/"),
    ):
        policy = response["Content-Security-Policy"]
        assert "script-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
        assert "unsafe-eval" not in policy


def test_api_docs_load_swagger_ui_from_our_static_files(client):
    page = client.get("/api/docs/").content.decode()

    assert "cdn.jsdelivr.net" not in page and "unpkg.com" not in page
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in page
    assert "<script>" not in page  # its set-up script is a file too, so CSP needs no exception


@pytest.mark.parametrize(
    "url",
    [
        "/admin/chat/turn/?status__exact=%00",
        "/admin/chat/turn/?q=%00abc",
        "/admin/feedback/feedback/?%00=1",
    ],
)
def test_a_nul_in_an_admin_filter_is_a_400_not_a_database_error(admin_client, url):
    response = admin_client.get(url)

    assert response.status_code == 400
    assert b"NUL" in response.content


def test_a_nul_in_an_api_query_is_a_json_400(staff_api):
    response = staff_api.get("/api/traces/?user=%00")

    assert response.status_code == 400
    assert response.json()["error"] == "invalid"


def _check_deploy(**env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={
            # The browser tests' conftest sets DJANGO_ALLOW_ASYNC_UNSAFE for this process.
            **{k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"},
            "DJANGO_SETTINGS_MODULE": "chatproject.settings",
            "DJANGO_SECRET_KEY": "x" * 20 + "deploy-check-only-8Hq2vLw9pZr4tYb6nMk3sJd7fGh5",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_the_documented_production_settings():
    """The README's "Production settings" block, as an operator would export it."""
    result = _check_deploy(
        DJANGO_HTTPS="true",
        DJANGO_HSTS_PRELOAD="true",
        DJANGO_TRUST_X_FORWARDED_PROTO="true",
        DJANGO_ALLOWED_HOSTS="chat.example.com",
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_warns_without_tls_settings():
    result = _check_deploy()

    assert result.returncode != 0
    assert "SECURE_HSTS_SECONDS" in result.stdout + result.stderr
