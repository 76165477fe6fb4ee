"""Unit tests: the command line and the -connect runtime list."""
from __future__ import annotations

import pytest

from criproxy.settings import (ConfigError, Runtime, config_from_args, config_from_values,
                               connect_string, parse_connect, to_values)
from tests.support.harness import REPO


def test_primary_and_named_runtimes() -> None:
    runtimes = parse_connect("/run/containerd.sock,virtlet.cloud:unix:///run/virtlet.sock")
    assert runtimes == (Runtime("", "/run/containerd.sock"),
                        Runtime("virtlet.cloud", "/run/virtlet.sock"))
    assert runtimes[0].is_primary and runtimes[0].label == "primary"
    assert runtimes[1].address == "unix:///run/virtlet.sock"


def test_primary_may_be_a_unix_url() -> None:
    assert parse_connect("unix:///run/c.sock") == (Runtime("", "/run/c.sock"),)


@pytest.mark.parametrize("value, named", [
    ("", "empty"),
    ("/a,/b", "'/b'"),
    ("/a,x:/b,x:/c", "'x'"),
    ("/a,a/b:/c", "'a/b'"),
    ("/a,a__b:/c", "'a__b'"),
    ("/a,:/c", "':/c'"),
    ("/a,x:", "'x:'"),
    ("x:/a", "'x:/a'"),
])
def test_bad_connect_names_the_bad_entry(value: str, named: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_connect(value)
    assert named in str(err.value)


def test_single_dash_flags_as_the_original() -> None:
    config = config_from_args(["-v", "3", "-logtostderr", "-connect", "/a,vm:/b",
                               "-listen", "/run/p.sock", "-streamPort", "12000"])
    assert config.verbosity == 3 and config.logtostderr
    assert config.listen == "/run/p.sock" and config.stream_port == 12000
    assert [r.name for r in config.runtimes] == ["", "vm"]


def test_double_dash_flags_work_too() -> None:
    config = config_from_args(["--connect", "/a", "--streamUrl", "http://10.1.2.3:11250/"])
    assert config.stream_url == "http://10.1.2.3:11250"


def test_defaults_and_required() -> None:
    config = config_from_values({"connect": "/a"})
    assert config.listen == "/run/criproxy.sock" and config.rundir == "/run/criproxy"
    assert config.list_budget == 2.0
    with pytest.raises(ConfigError, match="-connect is required"):
        config_from_values({})


@pytest.mark.parametrize("flag, value", [("streamPort", "0"), ("streamPort", "x"),
                                         ("v", "-1"), ("listBudget", "0"),
                                         ("streamUrl", "10.0.0.1:80")])
def test_bad_values_are_refused(flag: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"-{flag}"):
        config_from_args(["-connect", "/a", f"-{flag}", value])


def test_settings_round_trip_through_the_settings_file_form() -> None:
    config = config_from_args(["-connect", "/a,vm:/b", "-v", "4", "-listBudget", "1.5"])
    assert config_from_values(to_values(config)) == config
    assert connect_string(config.runtimes) == "/a,vm:/b"


def test_readme_documents_every_flag() -> None:
    from criproxy.settings import SETTINGS
    readme = (REPO / "README.md").read_text()
    missing = [s.flag for s in SETTINGS if f"| `{s.flag}` |" not in readme]
    assert not missing


def test_runtime_handlers() -> None:
    from criproxy.settings import HandlerRoute, parse_handlers
    assert parse_handlers("vm=virtlet.cloud:,kata=alt,gv=:runsc") == (
        HandlerRoute("vm", "virtlet.cloud", ""), HandlerRoute("kata", "alt", "kata"),
        HandlerRoute("gv", "", "runsc"))
    assert parse_handlers("") == ()
    for bad, named in [("vm", "'vm'"), ("=alt", "'=alt'"), ("a=x,a=y", "'a'")]:
        with pytest.raises(ConfigError) as err:
            parse_handlers(bad)
        assert named in str(err.value)
    config = config_from_args(["-connect", "/a,alt:/b", "-runtimeHandlers", "k=alt:kf"])
    assert config_from_values(to_values(config)) == config
    with pytest.raises(ConfigError, match="no runtime named 'zz'"):
        config_from_args(["-connect", "/a", "-runtimeHandlers", "k=zz"])


def test_connect_round_trips_through_the_settings_file() -> None:
    """Found by fuzz/target_flags.py: what the settings file holds must read back."""
    from criproxy.settings import connect_string, parse_connect
    for value in ("unix:///run/containerd/a:b.sock", "unix://unix:///x.sock",
                  "/p.sock,alt:unix://unix:///x.sock,vm:/v:w.sock"):
        runtimes = parse_connect(value)
        assert parse_connect(connect_string(runtimes)) == runtimes


@pytest.mark.parametrize("flags,why", [
    (["-connect", "unix:// "], "socket path is empty"),
    (["-connect", "/a", "-startWait", "1e309"], "finite"),
    (["-connect", "/a", "-listBudget", "nan"], "finite")])
def test_blank_sockets_and_infinite_durations_are_refused(flags: list[str], why: str) -> None:
    from criproxy.settings import ConfigError, config_from_args
    with pytest.raises(ConfigError, match=why):
        config_from_args(flags)


def test_a_unix_address_reads_back_the_same() -> None:
    from criproxy.settings import config_from_args, config_from_values, to_values
    config = config_from_args(["-connect", "/a", "-otlpEndpoint", "unix://///run/x.sock"])
    assert config.otlp_endpoint == "unix:/run/x.sock"
    assert config_from_values(to_values(config)) == config


@pytest.mark.parametrize("body", ["[1]", '"text"', "3"])
def test_a_settings_file_that_is_not_an_object_is_a_config_error(tmp_path, body: str) -> None:
    from criproxy.settings import ConfigError, load_settings_file
    (tmp_path / "settings.json").write_text(body)
    with pytest.raises(ConfigError, match="want a JSON object"):
        load_settings_file(str(tmp_path / "settings.json"))


def test_runtime_names_that_would_share_ids_are_refused() -> None:
    from criproxy.settings import ConfigError, parse_connect
    with pytest.raises(ConfigError, match="'x' and 'x_' cannot both be used"):
        parse_connect("/p.sock,x_:/b.sock,x:/a.sock")
