"""`relay devices` and the hardware catalog in hw/."""

import json

from click.testing import CliRunner

from relay import shipped
from relay.cli.main import cli
from relay.links import devices
from relay.links.at.profile import profiles


def test_usb_ids_name_the_likely_boards() -> None:
    heltec = devices.identify("/dev/ttyUSB0", 0x10C4, 0xEA60)
    assert heltec.usb_id == "10c4:ea60" and "CP210x" in (heltec.chip or "")
    assert heltec.guesses[0].device.startswith("Heltec")
    assert heltec.guesses[0].url == "meshtastic:///dev/ttyUSB0"
    tbeam = devices.identify("/dev/ttyACM0", "1A86", "55D4")
    assert any("T-Beam" in g.device for g in tbeam.guesses)
    rak = devices.identify("/dev/ttyACM1", 0x239A, 0x8029)
    assert any("RAK4631" in g.device for g in rak.guesses)
    ch340 = devices.identify("/dev/ttyUSB3", 0x1A86, 0x7523)
    assert any(g.profile == "wio-e5" for g in ch340.guesses)


def test_product_strings_come_first_and_unknown_ports_have_no_guess() -> None:
    reyax = devices.identify("/dev/ttyUSB1", 0x10C4, 0xEA60, product="REYAX RYLR998 USB")
    assert reyax.guesses[0].profile == "rylr998"
    assert reyax.guesses[0].url == "at:///dev/ttyUSB1?profile=rylr998"
    assert devices.identify("/dev/ttyS0").guesses == ()
    assert devices.identify("/dev/ttyS0").to_dict()["usb_id"] is None


def test_catalog_is_consistent_with_the_drivers() -> None:
    at = profiles()
    doc = devices.catalog()
    entries = [c for e in doc["usb"] for c in e["candidates"]] + doc["product"]
    for entry in entries:
        assert entry["driver"] in ("meshtastic", "kiss", "at", "none")
        if entry.get("profile") and entry["driver"] == "at":
            assert entry["profile"] in at
        if entry.get("url"):
            assert "{port}" in entry["url"]
    for entry in doc["usb"]:
        assert len(entry["vid"]) == len(entry["pid"]) == 4


def test_hw_files_ship_with_the_package() -> None:
    hw = shipped.folder("hw")
    assert "ID_MM_DEVICE_IGNORE" in hw.joinpath("udev/99-relay.rules").read_text()
    assert "M0" in hw.joinpath("WIRING.md").read_text()


def test_relay_devices_json_runs() -> None:
    result = CliRunner().invoke(cli, ["devices", "--json"])
    assert result.exit_code == 0, result.output
    ports = json.loads(result.output)["ports"]
    assert isinstance(ports, list)
    assert all("device" in p and "guesses" in p for p in ports)


def test_relay_devices_with_no_ports(monkeypatch) -> None:
    monkeypatch.setattr(devices, "list_devices", lambda: [])
    monkeypatch.setattr("relay.cli.devices.list_devices", lambda: [])
    result = CliRunner().invoke(cli, ["devices"])
    assert result.exit_code == 0 and "no serial devices found" in result.output
    result = CliRunner().invoke(cli, ["devices", "--json"])
    assert json.loads(result.output) == {"ports": []}


def test_relay_devices_text_lists_guesses(monkeypatch) -> None:
    fake = [devices.identify("/dev/ttyUSB0", 0x10C4, 0xEA60)]
    monkeypatch.setattr("relay.cli.devices.list_devices", lambda: fake)
    result = CliRunner().invoke(cli, ["devices"])
    assert "10c4:ea60" in result.output and "maybe Heltec" in result.output
