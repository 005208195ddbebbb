"""What a fake Meshtastic node says and puts on air, built from the library's own protobufs.

On air a Meshtastic packet is a 16-byte header (to, from, id, flags, channel hash, next hop,
relay node; little-endian, as the firmware lays it out) followed by the ``Data`` protobuf. The
emulator sends exactly those bytes over the simulated channel, so airtime is the real packet's
(the firmware's AES-CTR encryption keeps the length; it is left out). The channel byte carries
the channel index instead of the firmware's name/PSK hash: every emulated node shares one
channel table.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from meshtastic.protobuf import channel_pb2, config_pb2, mesh_pb2

BROADCAST = 0xFFFFFFFF
DATA_PAYLOAD_LEN = mesh_pb2.Constants.DATA_PAYLOAD_LEN
HEADER = struct.Struct("<IIIBBBB")
FIRMWARE_VERSION = "2.7.0.relay-emulator"
DEFAULT_HOP_LIMIT = 3
RX_RSSI = -40  # what every emulated reception reports: the simulated channel has no geometry
RX_SNR = 10.0


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a fake node is."""

    num: int
    long_name: str
    short_name: str

    @property
    def user_id(self) -> str:
        return f"!{self.num:08x}"


def encode_air(pkt: mesh_pb2.MeshPacket, sender: int) -> bytes:
    """The bytes a node transmits for a packet its client handed it."""
    hop_limit = pkt.hop_limit & 7
    flags = hop_limit | (int(pkt.want_ack) << 3) | (hop_limit << 5)  # hop_start = hop_limit
    head = HEADER.pack(pkt.to, sender, pkt.id, flags, pkt.channel & 0xFF, 0, sender & 0xFF)
    return head + pkt.decoded.SerializeToString()


def decode_air(air: bytes) -> mesh_pb2.MeshPacket:
    """A received transmission as the node hands it to its client (raises on junk)."""
    if len(air) < HEADER.size:
        raise ValueError(f"air frame of {len(air)} bytes is shorter than the header")
    to, sender, pid, flags, channel, _next_hop, _relay = HEADER.unpack_from(air)
    pkt = mesh_pb2.MeshPacket()
    pkt.decoded.ParseFromString(air[HEADER.size :])
    setattr(pkt, "from", sender)  # "from" is a Python keyword
    pkt.to, pkt.id, pkt.channel = to, pid, channel
    pkt.hop_limit, pkt.want_ack, pkt.hop_start = flags & 7, bool(flags & 8), flags >> 5
    pkt.rx_time, pkt.rx_rssi, pkt.rx_snr = int(time.time()), RX_RSSI, RX_SNR
    return pkt


def _user(ident: Identity) -> mesh_pb2.User:
    return mesh_pb2.User(
        id=ident.user_id,
        long_name=ident.long_name,
        short_name=ident.short_name,
        hw_model=mesh_pb2.HardwareModel.PRIVATE_HW,
    )


def handshake(
    me: Identity, others: list[Identity], preset: str, config_id: int
) -> list[mesh_pb2.FromRadio]:
    """The answer to ``want_config_id``: the node's info, config, channel and node list.

    The real client waits for my_info, a non-empty node list, the local config and the
    channels (filled in at config_complete); the LoRa config tells it the modem preset and the
    hop limit it puts on packets it sends.
    """
    out = [
        mesh_pb2.FromRadio(my_info=mesh_pb2.MyNodeInfo(my_node_num=me.num, nodedb_count=1)),
        mesh_pb2.FromRadio(
            metadata=mesh_pb2.DeviceMetadata(
                firmware_version=FIRMWARE_VERSION, hw_model=mesh_pb2.HardwareModel.PRIVATE_HW
            )
        ),
    ]
    lora = config_pb2.Config.LoRaConfig(
        use_preset=True,
        modem_preset=config_pb2.Config.LoRaConfig.ModemPreset.Value(preset),
        hop_limit=DEFAULT_HOP_LIMIT,
        tx_enabled=True,
    )
    out.append(mesh_pb2.FromRadio(config=config_pb2.Config(lora=lora)))
    out.append(
        mesh_pb2.FromRadio(config=config_pb2.Config(device=config_pb2.Config.DeviceConfig()))
    )
    primary = channel_pb2.Channel(
        index=0,
        role=channel_pb2.Channel.Role.PRIMARY,
        settings=channel_pb2.ChannelSettings(psk=b"\x01"),
    )
    out.append(mesh_pb2.FromRadio(channel=primary))
    for ident in [me, *others]:
        out.append(
            mesh_pb2.FromRadio(node_info=mesh_pb2.NodeInfo(num=ident.num, user=_user(ident)))
        )
    out.append(mesh_pb2.FromRadio(config_complete_id=config_id))
    return out


def queue_status(free: int, maxlen: int, packet_id: int = 0, res: int = 0) -> mesh_pb2.FromRadio:
    """Tells the client how much room the node's transmit queue has (it waits at zero)."""
    return mesh_pb2.FromRadio(
        queueStatus=mesh_pb2.QueueStatus(
            res=res, free=max(0, free), maxlen=maxlen, mesh_packet_id=packet_id
        )
    )


def parse_to_radio(body: bytes) -> mesh_pb2.ToRadio | None:
    """A client's frame, or None when it carries nothing the node understands."""
    msg = mesh_pb2.ToRadio()
    msg.ParseFromString(body)
    return msg if msg.WhichOneof("payload_variant") else None
