"""`relay link check`: the loopback test, on the simulator and on emulated AT modules."""

import asyncio
import json

from click.testing import CliRunner

from relay.cli.main import cli
from relay.emulate.at import Emulator
from relay.links.at import link as atmod
from relay.links.at.profile import profile
from relay.radio.lora import LoRaParams
from relay.runtime.linkcheck import check, classify, percentile, probe


def test_probes_tell_intact_damaged_and_foreign_apart() -> None:
    p = probe(7, 3, 48)
    assert classify(p, 7, 48) == ("ok", 3)
    damaged = bytearray(p)
    damaged[-1] ^= 1
    assert classify(bytes(damaged), 7, 48) == ("corrupted", 3)
    assert classify(p, 8, 48)[0] == "foreign"
    assert classify(b"voice packet", 7, 48)[0] == "foreign"


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 11)]
    assert (percentile(values, 50), percentile(values, 90)) == (5.0, 9.0)
    assert percentile([], 50) is None


def test_cli_check_on_the_simulator() -> None:
    result = CliRunner().invoke(
        cli, ["link", "check", "sim://x", "sim://x", "--count", "20", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["sent"], report["delivered"], report["lost"], report["corrupted"]) == (
        20,
        20,
        0,
        0,
    )
    lat = report["latency_ms"]
    assert lat["p50"] >= report["airtime_ms"] - 0.01 and lat["max"] >= lat["p90"] >= lat["p50"]


def test_cli_check_counts_losses_and_prints_text() -> None:
    result = CliRunner().invoke(
        cli, ["link", "check", "sim://lossy?loss=0.4&seed=2", "sim://lossy", "--count", "30"]
    )
    assert result.exit_code == 0, result.output
    assert "delivered" in result.output and "lost" in result.output
    result = CliRunner().invoke(
        cli, ["link", "check", "sim://l2?loss=0.4&seed=2", "sim://l2", "--count", "30", "--json"]
    )
    report = json.loads(result.output)
    assert report["delivered"] + report["lost"] == 30 and report["lost"] > 0


def test_cli_check_refuses_bad_input() -> None:
    result = CliRunner().invoke(cli, ["link", "check", "sim://a", "sim://a", "--size", "4000"])
    assert result.exit_code == 2 and "probe size" in result.output
    result = CliRunner().invoke(cli, ["link", "check", "nope://a", "sim://a"])
    assert result.exit_code == 2 and "unknown link scheme" in result.output


def test_check_over_two_emulated_at_modules() -> None:
    async def main() -> None:
        prof = profile("rylr998")
        lora = LoRaParams(sf=7, bw_hz=500_000, cr=5, preamble=12)
        async with Emulator(prof, 2, lora=lora) as emu:
            a = atmod.open_url(emu.url(emu.modules[0]))
            b = atmod.open_url(emu.url(emu.modules[1]))
            report = await check(a, b, count=10, size=prof.mtu)
            await a.close()
            await b.close()
        assert (report.sent, report.delivered, report.lost, report.corrupted) == (10, 10, 0, 0)
        assert report.latency_ms["p50"] >= report.airtime_ms

    asyncio.run(main())


def test_cli_check_over_emulated_at_modules_in_another_process(tmp_path) -> None:
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "emulate", "at", "--profile", "rak3172", "--pty",
         "--sf", "7", "--bw", "500", "--duration", "20"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        urls = [proc.stdout.readline().split()[2] for _ in range(2)]
        result = CliRunner().invoke(cli, ["link", "check", *urls, "--count", "10", "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        assert report["delivered"] == 10 and report["stats_b"]["received"] == 10
    finally:
        proc.terminate()
        proc.wait(5)
