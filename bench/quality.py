"""Speech quality under packet loss, and airtime saved by DTX: measured on real speech.

Every condition runs the product's own path: ``Encoder`` -> ``runtime.voice.batches`` (frames
per packet as the product packs them, FEC copies as the product attaches them) ->
``Sender.voice`` (AES-CCM sealed packets) -> seeded loss -> ``Receiver.receive`` ->
``runtime.voice.Playout`` (jitter buffer + concealment + FEC fallback, as listeners play) ->
scored against the input with STOI (pystoi, fs 8000) and narrow-band PESQ (pesq, 'nb').
Codec delay is found per file by band-envelope cross-correlation of the lossless decode
(Codec2 rebuilds phase, so waveforms do not correlate) and applied to every condition.

Conditions: silence (no concealment), repeat (last frame, faded), interpolate (the product's
default), and interpolate + FEC with each candidate redundant mode. Loss: independent random
0/5/10/20 % and a Gilbert-Elliott burst channel (10 % mean loss, bursts of 3 packets on
average). DTX: conversation-like audio (samples joined by 0.5-3 s pauses), airtime with and
without DTX, STOI on the speech parts.

Run: python -m bench.quality [--quick] [--json] [--out bench/quality.json]
     [--plot bench/quality.png] [--mode 1600]

The results are printed and saved as JSON (``--out``) before anything is drawn: the plot needs
matplotlib (``pip install 'relay[bench]'``), and without it the run ends with a one-line note.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _speech import speech_files

from relay.core import Receiver, RoomKeys, Sender, wire
from relay.core.events import VoiceFrames
from relay.radio.profiles import preset
from relay.runtime.voice import Playout, batches
from relay.voice.audio import read_audio
from relay.voice.codec import Encoder
from relay.voice.modes import SAMPLE_RATE, CodecMode, mode_by_name

NOW = 1_750_000_000.0
LINK_DELAY = 0.1  # seconds from capture of a packet's last frame to its arrival
IDENTITY = b"bench-speaker-identity"
SESSION = bytes(8)  # one sender start: the receiver is told it (no room here)
LOSSES: tuple[str, ...] = ("0", "5", "10", "20", "burst")
FPP = 5  # 200 ms of 1600 per packet, like the MANIFEST figures and `relay plan` on SHORT_FAST


class MemoryCounters:
    """Counter source for a benchmark: fresh numbers, nothing persisted."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def reserve(self, name: str, count: int, limit: int) -> int:
        start = self._next.get(name, 0)
        self._next[name] = start + count
        return start


# ------------------------------------------------------------------------------ loss models
def random_loss(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Independent loss of each packet with probability ``rate``."""
    return rng.random(n) < rate


def burst_loss(
    n: int, rng: np.random.Generator, mean_loss: float = 0.10, mean_burst: float = 3.0
) -> np.ndarray:
    """Gilbert-Elliott: a bad state that loses every packet, entered so the stationary loss is
    ``mean_loss`` and left after ``mean_burst`` packets on average (fading, collisions)."""
    p_bg = 1.0 / mean_burst
    p_gb = mean_loss * p_bg / (1.0 - mean_loss)
    lost = np.zeros(n, dtype=bool)
    bad = rng.random() < mean_loss
    for i in range(n):
        lost[i] = bad
        bad = (rng.random() >= p_bg) if bad else (rng.random() < p_gb)
    return lost


def loss_mask(name: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if name == "burst":
        return burst_loss(n, rng)
    return random_loss(n, int(name) / 100, rng)


# ------------------------------------------------------------------------------ the path
@dataclass
class Sent:
    packets: list[tuple[float, bytes]]  # (arrival time, datagram)
    total_frames: int
    air_bytes: int


def send(
    mode: CodecMode,
    frames: Sequence[bytes],
    fpp: int,
    redundant: Sequence[bytes] | None,
    positions: Sequence[int] | None = None,
) -> Sent:
    """Seal an over as the talker does (``runtime.voice.batches`` + ``Sender.voice``);
    ``positions`` are the over positions of ``frames`` when DTX skipped some."""
    keys = RoomKeys(bytes(range(32)))
    sender = Sender(keys, IDENTITY, MemoryCounters(), session=SESSION)
    packets = []
    air = 0
    last = -1
    for start, batch, red in batches(frames, fpp, redundant, positions):
        captured = (start + len(batch)) * mode.frame_seconds
        now = NOW + captured
        packet = (
            sender.voice(mode, start, batch, now)
            if red is None
            else sender.voice(mode, start, batch, now, red)
        )
        packets.append((captured + LINK_DELAY, packet))
        air += len(packet)
        last = start + len(batch) - 1
    return Sent(packets, last + 1, air)


def receive(sent: Sent, lost: np.ndarray, conceal: str) -> np.ndarray:
    """What a listener plays: the real receiver and playout, lost packets never arrive."""
    keys = RoomKeys(bytes(range(32)))
    receiver = Receiver(keys, window=1 << 16)
    receiver.add_sender(IDENTITY, SESSION)
    playout = Playout(conceal=conceal, idle_timeout=1e9)
    mode = None
    for (arrival, packet), gone in zip(sent.packets, lost, strict=True):
        if gone:
            continue
        event = receiver.receive(packet, NOW + arrival)
        if not isinstance(event, VoiceFrames):
            raise AssertionError(f"bench packet refused: {event}")
        mode = event.mode
        playout.voice(event, arrival)
    if mode is None:
        return np.zeros(0, dtype=np.int16)
    playout.end(IDENTITY, sent.total_frames)
    over = playout.overs[-1]
    return over.audio()


# ------------------------------------------------------------------------------ scoring
def _band_envelopes(x: np.ndarray, hop: int = 4, win: int = 128, bands: int = 8) -> np.ndarray:
    x = x.astype(np.float64)
    n = 1 + max(0, (len(x) - win) // hop)
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * np.hanning(win), axis=1)) ** 2
    edges = np.linspace(2, spec.shape[1], bands + 1).astype(int)
    env = np.stack([spec[:, a:b].sum(axis=1) for a, b in pairwise(edges)])
    env = np.log(env + 1e-3)
    env -= env.mean(axis=1, keepdims=True)
    env /= env.std(axis=1, keepdims=True) + 1e-9
    return env


def codec_delay(ref: np.ndarray, decoded: np.ndarray, max_delay: int = 480, hop: int = 4) -> int:
    """Samples by which ``decoded`` lags ``ref``: best band-envelope correlation."""
    a, b = _band_envelopes(ref, hop), _band_envelopes(decoded, hop)
    n = min(a.shape[1], b.shape[1]) - max_delay // hop
    scores = [float((a[:, :n] * b[:, lag : lag + n]).mean()) for lag in range(max_delay // hop)]
    return int(np.argmax(scores)) * hop


def aligned(ref: np.ndarray, deg: np.ndarray, delay: int) -> tuple[np.ndarray, np.ndarray]:
    deg = deg[delay:]
    n = min(len(ref), len(deg))
    r = ref[:n].astype(np.float64) / 32768
    d = np.zeros(n)
    d[: len(deg[:n])] = deg[:n].astype(np.float64) / 32768
    return r, d


def score(ref: np.ndarray, deg: np.ndarray, delay: int) -> tuple[float, float]:
    """(STOI, PESQ-NB) of ``deg`` against ``ref`` after removing the codec delay."""
    from pesq import pesq
    from pystoi import stoi

    r, d = aligned(ref, deg, delay)
    s = float(stoi(r, d, SAMPLE_RATE, extended=False))
    try:
        p = float(pesq(SAMPLE_RATE, r, d, "nb"))
    except Exception:  # pesq refuses signals it finds no speech in: count, do not crash
        p = math.nan
    return s, p


# ------------------------------------------------------------------------------ conditions
@dataclass(frozen=True)
class Condition:
    name: str
    conceal: str
    fec: str | None = None  # redundant mode name


def conditions(mode: CodecMode) -> list[Condition]:
    out = [
        Condition("silence", "silence"),
        Condition("repeat", "repeat"),
        Condition("interpolate", "interpolate"),
    ]
    if mode.name in wire.FEC_PAIRS:
        for red in ("1200", "700C"):
            if mode_by_name(red).samples_per_frame == mode.samples_per_frame and red != mode.name:
                out.append(Condition(f"interp+fec{red}", "interpolate", red))
    return out


def with_pairing(mode: CodecMode, red: str | None, fn: Callable[[], object]) -> object:
    """Run ``fn`` with the FEC pairing for ``mode`` set to ``red`` (bench-only comparison of
    candidate redundant modes; the product uses :data:`wire.FEC_PAIRS`)."""
    if red is None:
        return fn()
    saved = dict(wire.FEC_PAIRS)
    wire.FEC_PAIRS[mode.name] = red
    try:
        return fn()
    finally:
        wire.FEC_PAIRS.clear()
        wire.FEC_PAIRS.update(saved)


def loss_table(mode: CodecMode, files: list[Path], seeds: int, losses: Sequence[str]) -> dict:
    """STOI/PESQ per condition and loss, averaged over files and seeds."""
    conds = conditions(mode)
    acc: dict[tuple[str, str], list[tuple[float, float]]] = {}
    air: dict[str, list[float]] = {}
    for fi, path in enumerate(files):
        ref = read_audio(path)
        frames = Encoder(mode).encode(ref)
        plain = send(mode, frames, FPP, None)
        lossless = receive(plain, np.zeros(len(plain.packets), bool), "interpolate")
        delay = codec_delay(ref, lossless)
        air.setdefault("plain", []).append(plain.air_bytes / (len(ref) / SAMPLE_RATE))
        red_frames: dict[str, list[bytes]] = {}
        for c in conds:
            if c.fec and c.fec not in red_frames:
                red_frames[c.fec] = Encoder(mode_by_name(c.fec)).encode(ref)
        for c in conds:
            red = red_frames.get(c.fec) if c.fec else None
            sent = with_pairing(mode, c.fec, lambda red=red, fr=frames: send(mode, fr, FPP, red))
            if c.fec:
                air.setdefault(c.name, []).append(sent.air_bytes / (len(ref) / SAMPLE_RATE))
            for loss in losses:
                for seed in range(seeds if loss != "0" else 1):
                    lost = loss_mask(loss, len(sent.packets), 1000 * fi + seed)
                    if len(lost):
                        lost[0] = False  # keep the over's start: the grant/anchor case apart
                    deg = with_pairing(
                        mode, c.fec, lambda s=sent, m=lost, k=c.conceal: receive(s, m, k)
                    )
                    acc.setdefault((c.name, loss), []).append(score(ref, deg, delay))
    table = {}
    for (cname, loss), vals in acc.items():
        arr = np.array(vals, dtype=float)
        table.setdefault(cname, {})[loss] = {
            "stoi": round(float(np.nanmean(arr[:, 0])), 3),
            "pesq": round(float(np.nanmean(arr[:, 1])), 2),
            "n": len(vals),
        }
    return {
        "mode": mode.name,
        "frames_per_packet": FPP,
        "table": table,
        "bytes_per_second": {k: round(float(np.mean(v)), 1) for k, v in air.items()},
    }


# ------------------------------------------------------------------------------ DTX
def conversation(files: list[Path], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples joined by pauses of 0.5-3 s (low room noise in the pauses): audio, and a mask
    of the samples that are speech (the files, not the pauses)."""
    rng = np.random.default_rng(seed)
    parts, mask = [], []
    for path in files:
        pause = int(rng.uniform(0.5, 3.0) * SAMPLE_RATE)
        parts.append(rng.normal(0, 30, pause).astype(np.int16))  # about -60 dBFS
        mask.append(np.zeros(pause, bool))
        speech = read_audio(path)
        parts.append(speech)
        mask.append(np.ones(len(speech), bool))
    tail = int(1.0 * SAMPLE_RATE)
    parts.append(rng.normal(0, 30, tail).astype(np.int16))
    mask.append(np.zeros(tail, bool))
    return np.concatenate(parts), np.concatenate(mask)


def _speech_stoi(ref: np.ndarray, deg: np.ndarray, speech: np.ndarray, delay: int) -> float:
    """STOI over the speech parts only: each spoken sample file scored where it was spoken,
    averaged weighted by length."""
    from pystoi import stoi

    r, d = aligned(ref, deg, delay)
    m = speech[: len(r)].astype(int)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], m, [0]])))
    spans = list(zip(edges[::2], edges[1::2], strict=True))
    scores = [stoi(r[a:b], d[a:b], SAMPLE_RATE) for a, b in spans]
    return float(np.average(scores, weights=[b - a for a, b in spans]))


def dtx_once(mode: CodecMode, files: list[Path], seed: int, losses: Sequence[str]) -> dict:
    """One conversation: airtime and speech-part STOI, continuous against DTX."""
    from relay.voice.vad import dtx_positions

    audio, speech = conversation(files, seed=seed)
    frames = Encoder(mode).encode(audio)
    keep = dtx_positions(audio, mode)
    lora = preset("SHORT_FAST")
    runs = {
        "continuous": send(mode, frames, FPP, None),
        "dtx": send(mode, [frames[i] for i in keep], FPP, None, keep),
    }
    clean = runs["continuous"]
    delay = codec_delay(audio, receive(clean, np.zeros(len(clean.packets), bool), "repeat"))
    out: dict = {
        "seed": seed,
        "audio_seconds": round(len(audio) / SAMPLE_RATE, 2),
        "speech_fraction": round(float(speech.mean()), 3),
        "frames": len(frames),
        "frames_sent_dtx": len(keep),
    }
    for name, sent in runs.items():
        row: dict = {
            "packets": len(sent.packets),
            "air_bytes": sent.air_bytes,
            "airtime_s": round(sum(lora.airtime(len(p)) for _, p in sent.packets), 3),
        }
        for loss in losses:
            lost = loss_mask(loss, len(sent.packets), 77 + seed)
            if len(lost):
                lost[0] = False
            deg = receive(sent, lost, "interpolate")
            row[f"speech_stoi_{loss}"] = round(_speech_stoi(audio, deg, speech, delay), 4)
        out[name] = row
    c, d = out["continuous"], out["dtx"]
    out["airtime_saved"] = round(1 - d["airtime_s"] / c["airtime_s"], 4)
    for loss in losses:
        key = f"speech_stoi_{loss}"
        out[f"stoi_delta_{loss}"] = round(d[key] - c[key], 4)
    return out


def dtx_section(
    mode: CodecMode, files: list[Path], seeds: int = 5, losses: Sequence[str] = ("0", "10")
) -> dict:
    """DTX on ``seeds`` conversations (samples in shuffled order, pauses of 0.5-3 s): airtime
    saved on SHORT_FAST and the speech-part STOI change, mean and range."""
    runs = []
    for seed in range(seeds):
        order = np.random.default_rng(seed).permutation(len(files))
        runs.append(dtx_once(mode, [files[i] for i in order], seed, losses))
    keys = ["airtime_saved", *(f"stoi_delta_{loss}" for loss in losses)]
    summary = {
        k: {
            "mean": round(float(np.mean([r[k] for r in runs])), 4),
            "min": round(float(np.min([r[k] for r in runs])), 4),
            "max": round(float(np.max([r[k] for r in runs])), 4),
        }
        for k in keys
    }
    for loss in losses:
        for name in ("continuous", "dtx"):
            key = f"speech_stoi_{loss}"
            summary[f"{name}_{key}"] = round(float(np.mean([r[name][key] for r in runs])), 4)
    summary["speech_fraction"] = round(float(np.mean([r["speech_fraction"] for r in runs])), 3)
    summary["audio_seconds"] = round(float(np.sum([r["audio_seconds"] for r in runs])), 1)
    return {"summary": summary, "runs": runs}


# ------------------------------------------------------------------------------ output
def print_table(result: dict) -> None:
    losses = [k for k in LOSSES if any(k in row for row in result["table"].values())]
    head = f"{'condition':<16}" + "".join(
        f"{(x + '%') if x != 'burst' else 'burst':>14}" for x in losses
    )
    print(f"Codec2 {result['mode']}, {result['frames_per_packet']} frames/packet; STOI / PESQ-NB")
    print(head)
    for cname, row in result["table"].items():
        cells = "".join(
            f"{row[x]['stoi']:>8.3f}/{row[x]['pesq']:<5.2f}" if x in row else " " * 14
            for x in losses
        )
        print(f"{cname:<16}{cells}")
    print("bytes/s on air:", result["bytes_per_second"])


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [k for k in LOSSES if any(k in row for row in result["table"].values())]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("stoi", "pesq"), strict=True):
        for cname, row in result["table"].items():
            xs = [x for x in losses if x in row]
            ax.plot(xs, [row[x][metric] for x in xs], marker="o", label=cname)
        ax.set_xlabel("packet loss (% random, or burst = Gilbert-Elliott 10 %)")
        ax.set_ylabel("STOI" if metric == "stoi" else "PESQ-NB (MOS-LQO)")
        ax.grid(alpha=0.3)
    axes[0].axhline(0.80, color="grey", ls="--", lw=0.8)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Codec2 {result['mode']}, {result['frames_per_packet']} frames/packet")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def can_plot() -> bool:
    """Whether matplotlib imports (it is the optional ``bench`` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def save(result: dict, path: Path) -> None:
    """Write the results as JSON, first thing after measuring: minutes of work are not lost
    to whatever fails afterwards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


def print_summary(result: dict) -> None:
    print_table(result)
    if "dtx" in result:
        d = result["dtx"]["summary"]
        print(
            f"DTX on {d['audio_seconds']} s of conversation ({d['speech_fraction']:.0%} "
            f"speech): airtime saved {d['airtime_saved']['mean']:.1%} "
            f"(range {d['airtime_saved']['min']:.1%}..{d['airtime_saved']['max']:.1%}); "
            "speech STOI continuous -> DTX: "
            + ", ".join(
                f"{loss}% loss {d['continuous_speech_stoi_' + loss]:.3f}"
                f" -> {d['dtx_speech_stoi_' + loss]:.3f}"
                for loss in (k.removeprefix("stoi_delta_") for k in d)
                if "continuous_speech_stoi_" + loss in d
            )
        )
    print(f"results: {result['results']}  ({result['seconds']} s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="3 files, 2 seeds, 2 DTX conversations (about 25 s)"
    )
    ap.add_argument(
        "--tiny", action="store_true", help="1 file, 1 seed, no loss, no DTX: a smoke run (s)"
    )
    ap.add_argument("--mode", default="1600")
    ap.add_argument("--seeds", type=int, default=3)
    here = Path(__file__).resolve().parent
    ap.add_argument("--out", default=str(here / "quality.json"), help="results as JSON")
    ap.add_argument("--plot", default=str(here / "quality.png"), help="'' for no plot")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument("--no-dtx", action="store_true", help="skip the DTX section")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    mode = mode_by_name(args.mode)
    files = speech_files()
    if args.quick or args.tiny:
        files = [f for f in files if f.stem in ("hts1", "hts2", "cross")] or files[:3]
    if args.tiny:
        files = files[:1]
    seeds = 2 if args.quick else 1 if args.tiny else args.seeds
    t0 = time.perf_counter()
    result = loss_table(mode, files, seeds, ("0",) if args.tiny else LOSSES)
    if not (args.no_dtx or args.tiny):
        result["dtx"] = dtx_section(mode, speech_files(), seeds=2 if args.quick else 5)
    result["files"] = [f.name for f in files]
    result["seeds"] = seeds
    result["seconds"] = round(time.perf_counter() - t0, 1)
    drawing = bool(args.plot) and can_plot()
    result["plot"] = args.plot if drawing else None
    result["results"] = args.out
    save(result, Path(args.out))
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        print_summary(result)
    if drawing:
        plot(result, Path(args.plot))
    elif args.plot:
        print("no plot: matplotlib is not installed (pip install 'relay[bench]')", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
