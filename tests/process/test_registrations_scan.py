"""What registers in -runtimesDir (criproxy/registrations.py): a unit test of the scan
the registrar and doctor share, and of the list the registrar publishes."""
from __future__ import annotations

import json
import os
import pwd
import socket
from pathlib import Path
from typing import Iterator

import pytest

from criproxy.registrations import (Registration, published_registrations, publish, read_published,
                                    scan)
from criproxy.settings import ConfigError, HandlerRoute

NOBODY = pwd.getpwnam("nobody").pw_uid


@pytest.fixture
def rdir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "runtimes"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    yield directory


def listening(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.listen()
    return sock


def look(directory: Path, names: set[str] = frozenset({""}),  # type: ignore[assignment]
         handlers: set[str] = frozenset()) -> tuple[dict, dict]:  # type: ignore[assignment]
    found = scan(directory, set(names), set(handlers))
    assert not found.problem, found.problem
    return found.registered, {r.entry: r.reason for r in found.refused}


def test_a_socket_a_symlink_to_one_and_a_dangling_symlink_register(rdir: Path,
                                                                   tmp_path: Path) -> None:
    with listening(rdir / "vm.cloud.sock"), listening(tmp_path / "kata.sock"):
        (rdir / "kata.sock").symlink_to(tmp_path / "kata.sock")
        (rdir / "restarting.sock").symlink_to(tmp_path / "not-there-yet.sock")
        (rdir / "notes.txt").write_text("ignored: not NAME.sock")
        registered, refused = look(rdir)
    assert sorted(registered) == ["kata", "restarting", "vm.cloud"] and not refused
    assert registered["kata"] == Registration("kata", str(rdir / "kata.sock"))


def test_what_is_not_a_socket_is_refused(rdir: Path, tmp_path: Path) -> None:
    (rdir / "file.sock").write_text("")
    (tmp_path / "plain").write_text("")
    (rdir / "tofile.sock").symlink_to(tmp_path / "plain")
    (rdir / "dir.sock").mkdir()
    registered, refused = look(rdir)
    assert not registered
    assert set(refused) == {"file.sock", "tofile.sock", "dir.sock"}
    assert all("not a unix socket" in reason for reason in refused.values())


@pytest.mark.parametrize("entry,reason", [
    ("bad__name.sock", "no '__'"), ("sp ace.sock", "may only hold"), (".sock", "empty"),
    ("x" * 64 + ".sock", "at most 63"), ("alt.sock", "taken by -connect")])
def test_names_follow_the_connect_rules(rdir: Path, entry: str, reason: str) -> None:
    (rdir / entry).write_text("")  # the name is judged first (a socket path may not fit)
    registered, refused = look(rdir, names={"", "alt"})
    assert not registered and reason in refused[entry]


def test_handlers_come_from_the_json_beside_the_socket(rdir: Path) -> None:
    (rdir / "vm.json").write_text(json.dumps({"runtimeHandlers": {"vm": "qemu", "kvm": "kvm"}}))
    with listening(rdir / "vm.sock"):
        registered, _ = look(rdir)
    assert registered["vm"].handlers == (HandlerRoute("kvm", "vm", "kvm"),
                                         HandlerRoute("vm", "vm", "qemu"))


@pytest.mark.parametrize("extra,reason", [
    ("{not json", "not JSON"), (b"\xff\xfe", "not JSON"), ('["vm"]', "an object"),
    ('{"runtimeHandler": {}}', "only \"runtimeHandlers\""),
    ('{"runtimeHandlers": {"vm": ""}}', "non-empty"),
    ('{"runtimeHandlers": {"vm": 3}}', "non-empty"),
    ('{"runtimeHandlers": {"kata": "kata"}}', "taken by -runtimeHandlers"),
    ("{" + " " * 70000 + "}", "over 65536 bytes")])
def test_a_bad_json_refuses_the_registration(rdir: Path, extra: str | bytes, reason: str) -> None:
    path = rdir / "vm.json"
    path.write_bytes(extra if isinstance(extra, bytes) else extra.encode())
    with listening(rdir / "vm.sock"):
        registered, refused = look(rdir, handlers={"kata"})
    assert not registered and reason in refused["vm.sock"]


def test_a_handler_registered_twice_goes_to_the_first(rdir: Path) -> None:
    for name in ("a", "b"):
        (rdir / f"{name}.json").write_text('{"runtimeHandlers": {"vm": "vm"}}')
    with listening(rdir / "a.sock"), listening(rdir / "b.sock"):
        registered, refused = look(rdir)
    assert list(registered) == ["a"] and "registered by runtime a already" in refused["b.sock"]


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777])
def test_a_directory_others_can_write_registers_nobody(rdir: Path, mode: int) -> None:
    with listening(rdir / "vm.sock"):
        os.chmod(rdir, mode)
        found = scan(rdir, {""}, set())
    assert not found.registered and "anyone who can write there" in found.problem


def test_a_directory_or_an_entry_another_user_owns_is_refused(rdir: Path,
                                                              tmp_path: Path) -> None:
    with listening(tmp_path / "evil.sock"):
        (rdir / "evil.sock").symlink_to(tmp_path / "evil.sock")
        os.lchown(rdir / "evil.sock", NOBODY, -1)
        registered, refused = look(rdir)
        assert not registered and f"owned by uid {NOBODY}" in refused["evil.sock"]
        os.chown(rdir, NOBODY, -1)
        assert "must be owned by uid 0" in scan(rdir, {""}, set()).problem
    (tmp_path / "link").symlink_to(rdir)
    assert "not a directory" in scan(tmp_path / "link", {""}, set()).problem
    assert "cannot read runtimes dir" in scan(tmp_path / "missing", {""}, set()).problem


def test_the_published_list_reads_back(tmp_path: Path) -> None:
    wanted = [Registration("vm", "/run/r/vm.sock", (HandlerRoute("vm", "vm", "qemu"),)),
              Registration("kata", "/run/r/kata.sock", (), missing_since=12.5)]
    publish(tmp_path, Path("/run/r"), wanted, [], "")
    assert published_registrations(tmp_path) == {r.name: r for r in wanted}
    assert read_published(tmp_path)["directory"] == "/run/r"


@pytest.mark.parametrize("body", [
    "", "{", "[1]", '{"runtimes": 3}', '{"runtimes": [{"name": "x"}]}', '{"runtimes": [3]}',
    '{"runtimes": [{"name": "x", "socket": "/s", "handlers": 3}]}',
    '{"runtimes": [{"name": "a__b", "socket": "/s", "handlers": {}}]}',
    '{"runtimes": [{"name": "x", "socket": 7, "handlers": {}}]}',
    '{"runtimes": [{"name": "x", "socket": "/s", "handlers": {}, "missing_since": "now"}]}'])
def test_a_damaged_published_list_is_a_clear_error(tmp_path: Path, body: str) -> None:
    (tmp_path / "registered.json").write_text(body)
    with pytest.raises(ConfigError, match="registered.json"):
        published_registrations(tmp_path)


def test_no_published_list_is_no_registration(tmp_path: Path) -> None:
    assert published_registrations(tmp_path) == {}


@pytest.mark.parametrize("entry,taken", [("x_.sock", "x"), ("x.sock", "x_")])
def test_names_that_would_share_ids_are_refused(rdir: Path, entry: str, taken: str) -> None:
    """`x` shows id `_y` as `x___y`, `x_` shows id `y` so too (found by fuzz/)."""
    (rdir / entry).write_text("")
    registered, refused = look(rdir, names={"", taken})
    assert not registered and f"would share ids with runtime {taken!r}" in refused[entry]


def test_registrations_that_would_share_ids_take_the_first(rdir: Path) -> None:
    with listening(rdir / "x.sock"), listening(rdir / "x_.sock"):
        registered, refused = look(rdir)
    assert list(registered) == ["x"] and "share ids" in refused["x_.sock"]
