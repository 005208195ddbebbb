"""Pipeline speed: relay's whole voice path against bare pycodec2, same speech, same run.

bare:     pycodec2 encode + decode, frame by frame (the floor: nothing can be faster)
pipeline: Encoder -> Sender.voice (pack + AES-CCM seal, durable counters in SQLite)
          -> Receiver.receive (parse + replay check + open + unpack) -> Decoder
Goal: pipeline speed >= 0.7 x bare. Prints real-time factors and the ratio.
Run: python bench/pipeline.py [--mode 1600] [--frames-per-packet 5] [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pycodec2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _speech import all_speech

from relay.core import Receiver, RoomKeys, Sender, random_room_key
from relay.store.counters import CounterStore
from relay.voice.codec import Decoder, Encoder
from relay.voice.modes import SAMPLE_RATE, mode_by_name


def bare(pcm: np.ndarray, mode) -> float:
    codec = pycodec2.Codec2(mode.pycodec2_mode)
    spf = mode.samples_per_frame
    n = len(pcm) // spf
    frames_in = np.ascontiguousarray(pcm[: n * spf].astype("<i2")).reshape(n, spf)
    t = time.perf_counter()
    for row in frames_in:
        codec.decode(codec.encode(row))
    return time.perf_counter() - t


def pipeline(pcm: np.ndarray, mode, fpp: int, state: Path) -> float:
    keys = RoomKeys(random_room_key())
    store = CounterStore(state / f"c{time.perf_counter_ns()}.db")
    sender = Sender(keys, b"bench-speaker", store)
    receiver = Receiver(keys)
    receiver.add_sender(b"bench-speaker", sender.session)
    encoder, decoder = Encoder(mode), Decoder(mode)
    spf = mode.samples_per_frame
    n = len(pcm) // spf
    pcm = pcm[: n * spf]
    now = time.time()
    t = time.perf_counter()
    frames = encoder.encode(pcm)
    decoded = 0
    for first in range(0, len(frames), fpp):
        packet = sender.voice(mode, first, frames[first : first + fpp], now)
        event = receiver.receive(packet, now)
        for frame in event.frames:
            decoder.decode(frame)
            decoded += 1
    elapsed = time.perf_counter() - t
    store.close()
    assert decoded == n, "pipeline lost frames"
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="1600")
    ap.add_argument("--frames-per-packet", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    mode = mode_by_name(args.mode)
    pcm = all_speech()
    seconds = len(pcm) / SAMPLE_RATE
    bare_t, pipe_t = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):  # interleaved, so drift in machine load hits both
            bare_t.append(bare(pcm, mode))
            pipe_t.append(pipeline(pcm, mode, args.frames_per_packet, Path(tmp)))
    b, p = min(bare_t), min(pipe_t)
    print(f"speech: {seconds:.1f} s, Codec2 {mode.name}, {args.frames_per_packet} frames/packet")
    print(f"bare pycodec2 encode+decode : {seconds / b:7.0f} x real time ({b * 1000:.1f} ms)")
    print(f"relay pipeline              : {seconds / p:7.0f} x real time ({p * 1000:.1f} ms)")
    print(f"pipeline speed / bare speed : {b / p:.3f}   (goal >= 0.7)")


if __name__ == "__main__":
    main()
