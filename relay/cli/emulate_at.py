"""`relay emulate at`: fake UART LoRa modules (REYAX, RAK3172, Wio-E5, EBYTE) on ptys."""

from __future__ import annotations

import asyncio

import click

from relay.errors import UsageError


@click.command("at")
@click.option("--profile", "profile_name", required=True, help="rylr998, rylr896, rak3172, "
              "wio-e5, e22 or e220 (firmware_profiles/at.toml).")  # fmt: skip
@click.option("--pty", "use_pty", is_flag=True, help="Serve each module on a pseudo-terminal "
              "(the only transport: real modules are serial devices).")  # fmt: skip
@click.option("--count", type=click.IntRange(1, 64), default=2, show_default=True,
              help="How many modules (ptys) share the simulated LoRa channel.")  # fmt: skip
@click.option("--link", "link_prefix", metavar="PREFIX",
              help="Also make symlinks PREFIX0, PREFIX1, ... that follow a replug.")  # fmt: skip
@click.option("--preset", help="Channel LoRa setting from a Meshtastic preset (SHORT_FAST...).")
@click.option("--sf", type=int, help="Channel spreading factor (default: the profile's).")
@click.option("--bw", type=float, help="Channel bandwidth in kHz (with --sf).")
@click.option("--cr", type=int, help="Channel coding rate 5-8 meaning 4/5..4/8 (with --sf).")
@click.option("--loss", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of packets the channel loses between modules, 0..1.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the loss draws.")
@click.option("--duration", type=click.FloatRange(min=0), help="Stop after this many seconds.")
@click.option("--verbose", "-v", is_flag=True, help="Log configuration mismatches and junk.")
def at_cmd(
    profile_name, use_pty, count, link_prefix, preset, sf, bw, cr, loss, seed, duration, verbose,
):  # fmt: skip
    """Fake UART LoRa modules on pseudo-terminals, sharing one simulated channel.

    Each module answers its firmware's AT commands (or, for EBYTE, carries raw bytes) and
    transmits over a simulated LoRa channel with real airtime, collisions and loss. Open
    the printed at:// URLs with relay, or talk to the ptys with a terminal program.

    \b
    Examples:
      relay emulate at --profile rylr998 --pty
      relay emulate at --profile rak3172 --pty --count 3 --sf 7 --bw 500 --loss 0.05
      relay emulate at --profile e22 --pty --link /tmp/e22-
    then: relay link check URL0 URL1 with two of the printed URLs
    """
    from relay.cli.foreground import log_to_stderr, run_until_stopped
    from relay.emulate.at import Emulator
    from relay.links.at.profile import profile as at_profile
    from relay.radio.lora import LoRaParams
    from relay.radio.profiles import preset as meshtastic_preset

    if not use_pty:
        raise UsageError("AT modules are served on pseudo-terminals: add --pty")
    if preset and sf is not None:
        raise UsageError("give --preset or --sf/--bw/--cr, not both")
    if sf is None and (bw is not None or cr is not None):
        raise UsageError("--bw and --cr describe a custom setting: give --sf as well")
    prof = at_profile(profile_name)
    base = prof.settings().lora
    if preset:
        lora = meshtastic_preset(preset).lora
        lora = LoRaParams(sf=lora.sf, bw_hz=lora.bw_hz, cr=lora.cr, preamble=base.preamble)
    elif sf is not None:
        bw_hz = base.bw_hz if bw is None else bw * 1000
        lora = LoRaParams(sf=sf, bw_hz=bw_hz, cr=cr or base.cr, preamble=base.preamble)
    else:
        lora = base
    prof.settings(sf=lora.sf, bw_hz=lora.bw_hz, cr=lora.cr)  # the firmware must accept it
    log_to_stderr("relay.emulate", verbose)

    async def serve() -> None:
        emu = Emulator(prof, count, lora=lora, loss=loss, seed=seed, link_prefix=link_prefix)
        emu.start()
        try:
            for module in emu.modules:
                click.echo(f"{module.name}: {module.port.path if module.port else '?'}  "
                           f"{emu.url(module)}")  # fmt: skip
            click.echo(
                f"{count} x {prof.title} on SF{lora.sf}/BW{lora.bw_hz / 1000:g}k/CR4/{lora.cr}"
                f", loss {loss:.0%}; Ctrl-C stops"
            )
            await run_until_stopped(duration)
        finally:
            await emu.close()
            counts = [f"{k} {v:g}" for k, v in emu.summary().items() if v]
            click.echo(
                f"relay emulate: stopped. {'  '.join(counts) or 'nothing happened'}", err=True
            )

    try:
        asyncio.run(serve())
    except OSError as exc:
        raise UsageError(f"cannot create the emulated modules: {exc}") from None
