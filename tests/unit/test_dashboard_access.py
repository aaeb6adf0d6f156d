"""The dashboard's access rules without a server: Host names, Origins, tokens, token files."""

from __future__ import annotations

from pathlib import Path

import pytest

from titanic.ops.dashboard.access import (
    Access,
    Asked,
    TokenError,
    allowed_hosts,
    check_token,
    read_token_file,
    same_origin,
    shown_host,
    split_host,
)

TOKEN = "t0ken-of-twenty-chars"
PORT = 8080


def loopback(*, reading_needs_token: bool = False) -> Access:
    return Access(allowed_hosts("127.0.0.1", PORT), TOKEN, PORT, reading_needs_token)


@pytest.mark.parametrize(("header", "parsed"), [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)),
    ("LocalHost:8080", ("localhost", 8080)),
    ("localhost.:8080", ("localhost", 8080)),
    ("[::1]:8080", ("[::1]", 8080)),
    ("[0:0:0:0:0:0:0:1]:8080", ("[::1]", 8080)),
    ("example.com", ("example.com", 80)),
    ("", None),
    ("::1", None),
    ("[::1", None),
    ("[nonsense]:80", None),
    ("a b:80", None),
    ("host:", None),
    ("host:0", None),
    ("host:65536", None),
    ("host:８０", None),
    ("host:80:81", None),
    ("host/x:80", None),
])
def test_host_headers_are_read_strictly(header: str, parsed: tuple[str, int] | None) -> None:
    assert split_host(header) == parsed


def test_loopback_bind_answers_to_the_loopback_names_on_its_port_only() -> None:
    hosts = allowed_hosts("127.0.0.1", PORT)
    assert hosts == {("127.0.0.1", PORT), ("localhost", PORT), ("[::1]", PORT)}
    assert ("localhost", PORT) in allowed_hosts("::1", PORT)
    assert ("[::1]", PORT) in allowed_hosts("::1", PORT)


def test_specific_address_answers_to_itself_and_allowed_names() -> None:
    assert allowed_hosts("192.0.2.7", PORT) == {("192.0.2.7", PORT)}
    hosts = allowed_hosts("192.0.2.7", PORT, ["dash.example", "proxy.example:443"])
    assert hosts == {("192.0.2.7", PORT), ("dash.example", PORT), ("proxy.example", 443)}


def test_every_interface_answers_to_loopback_and_the_machine_names() -> None:
    hosts = allowed_hosts("0.0.0.0", PORT, machine=["vm", "192.0.2.7", "fe80::1%eth0"])
    assert hosts == {("127.0.0.1", PORT), ("localhost", PORT), ("[::1]", PORT),
                     ("vm", PORT), ("192.0.2.7", PORT)}
    assert shown_host("0.0.0.0", ["dash.example:443"]) == "dash.example"
    assert shown_host("::1") == "[::1]"


def test_a_malformed_allowed_host_is_an_error() -> None:
    with pytest.raises(ValueError, match="--allow-host"):
        allowed_hosts("127.0.0.1", PORT, ["not a name"])


@pytest.mark.parametrize(("origin", "host", "same"), [
    ("http://127.0.0.1:8080", "127.0.0.1:8080", True),
    ("http://LOCALHOST:8080", "localhost:8080", True),
    ("https://dash.example", "dash.example:443", True),
    ("http://dash.example", "dash.example", True),
    ("http://localhost:8080", "127.0.0.1:8080", False),
    ("http://evil.example", "127.0.0.1:8080", False),
    ("http://127.0.0.1:8081", "127.0.0.1:8080", False),
    ("ftp://127.0.0.1:8080", "127.0.0.1:8080", False),
    ("null", "127.0.0.1:8080", False),
    ("http://127.0.0.1:8080/x", "127.0.0.1:8080", False),
])
def test_origin_is_same_only_for_the_same_host_and_port(origin: str, host: str,
                                                        same: bool) -> None:
    assert same_origin(origin, host) is same


def test_foreign_host_is_refused_whatever_else_the_request_shows() -> None:
    access = loopback()
    for method in ("GET", "POST"):
        refusal = access.check(Asked(method, "/", "evil.example:8080", header_token=TOKEN))
        assert refusal is not None and refusal.status == 421
    assert access.check(Asked("GET", "/", None)) is not None
    assert access.check(Asked("GET", "/", "127.0.0.1:8080")) is None


def test_actions_need_the_token_and_no_foreign_origin() -> None:
    access = loopback()
    host = "127.0.0.1:8080"
    ours = "http://127.0.0.1:8080"
    assert access.check(Asked("POST", "/x", host, origin=ours, header_token=TOKEN)) is None
    assert access.check(Asked("POST", "/x", host, header_token=TOKEN)) is None  # a script
    for refused in (Asked("POST", "/x", host, origin=ours),
                    Asked("POST", "/x", host, origin=ours, header_token=TOKEN + "x"),
                    Asked("POST", "/x", host, origin=ours, query_token=TOKEN),
                    Asked("POST", "/x", host, origin=ours, cookie=access.cookie_value),
                    Asked("POST", "/x", host, origin="http://evil.example", header_token=TOKEN),
                    Asked("DELETE", "/x", host, origin="null", header_token=TOKEN),
                    Asked("POST", "/x", host, fetch_site="cross-site", header_token=TOKEN)):
        refusal = access.check(refused)
        assert refusal is not None and refusal.status == 403, refused


def test_reading_needs_the_token_beyond_loopback() -> None:
    access = loopback(reading_needs_token=True)
    host = "127.0.0.1:8080"
    refusal = access.check(Asked("GET", "/api/state", host))
    assert refusal is not None and refusal.status == 403
    assert access.check(Asked("GET", "/api/state", host, header_token=TOKEN)) is None
    assert access.check(Asked("GET", "/api/state", host, cookie=access.cookie_value)) is None
    assert access.check(Asked("GET", "/", host, query_token=TOKEN)) is None
    assert access.check(Asked("GET", "/api/state", host, query_token=TOKEN)) is not None
    assert access.check(Asked("GET", "/", host, cookie="0" * 64)) is not None
    assert access.gives_token(Asked("GET", "/", host, query_token=TOKEN))
    assert not access.gives_token(Asked("GET", "/", host, cookie=access.cookie_value))
    assert loopback().gives_token(Asked("GET", "/", host))
    assert TOKEN not in access.cookie_value and access.cookie_name.endswith("8080")


def test_tokens_are_long_printable_and_their_files_private(tmp_path: Path) -> None:
    assert check_token("  " + TOKEN + "\n", "here") == TOKEN
    for bad in ("short", "has a space in it, long enough", "naïve-but-long-enough-token"):
        with pytest.raises(TokenError):
            check_token(bad, "here")
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    assert read_token_file(path) == TOKEN
    path.chmod(0o640)
    with pytest.raises(TokenError, match="chmod 600"):
        read_token_file(path)
    with pytest.raises(TokenError, match="cannot read"):
        read_token_file(tmp_path / "missing")
