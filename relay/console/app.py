"""The room console: a terminal UI (textual) over :class:`relay.app.session.RoomSession`.

It only draws snapshots and turns keys into the session's calls: the room itself (floor,
hands, mutes, keys) lives in the protocol core, so this screen, `relay mod` and a browser
gateway always agree.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Label, Log, Static

from relay.app.session import LogLine, MemberView, RoomSession, Snapshot
from relay.errors import LinkError, UsageError

REFRESH = 0.2
HOLD_GRACE = 0.8  # hold-to-talk: stops this long after the last key repeat (X11 waits 0.66 s)
METER = 24
MODERATOR_KEYS = frozenset(("grant", "revoke", "mute", "remove", "appoint"))
TRANSMIT_KEYS = frozenset(("ptt", "hand")) | MODERATOR_KEYS


def clock_text(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def meter(value: float, width: int = METER) -> str:
    filled = round(max(0.0, min(1.0, value)) * width)
    return "█" * filled + "░" * (width - filled)


def member_state(m: MemberView) -> str:
    flags = []
    if m.me:
        flags.append("you")
    if m.moderator:
        flags.append("moderator")
    if m.speaking:
        flags.append("speaking")
    if m.hand:
        flags.append("hand up")
    if m.muted:
        flags.append("MUTED")
    if m.removed:
        flags.append("REMOVED")
    return ", ".join(flags)


def floor_text(snap: Snapshot) -> str:
    floor = snap.floor
    if floor.holder is None:
        return "FLOOR  free" + ("   (space: take it and talk)" if snap.moderator else "")
    who = floor.holder.name + (" (you)" if floor.mine else "")
    air = "  ● ON AIR" if snap.talking else ("  speaking" if floor.holder.speaking else "")
    return f"FLOOR  {who}{air}   held {clock_text(floor.held)}   left {clock_text(floor.left)}"


def health_text(snap: Snapshot) -> str:
    link = snap.link
    loss = "n/a" if link.loss is None else f"{100 * link.loss:.0f} %"
    if link.duty_cycle < 1:
        limit = f"{100 * link.duty_cycle:g} %"
        air = f"{link.airtime_used:.1f} of {link.airtime_budget:.0f} s/h ({limit})"
    else:
        air = f"{link.airtime_used:.1f} s/h"
    signal = "RSSI/SNR n/a"
    if link.rssi is not None or link.snr is not None:
        rssi = "?" if link.rssi is None else f"{link.rssi:.0f} dBm"
        snr = "?" if link.snr is None else f"{link.snr:.1f} dB"
        signal = f"RSSI {rssi}  SNR {snr}"
    state = "up" if link.alive else "CLOSED"
    return (
        f"LINK  {link.radio} {state} · loss {loss} · dropped {link.dropped} · "
        f"airtime {air} · {signal}"
    )


def overs_text(snap: Snapshot, count: int = 4) -> str:
    if not snap.overs:
        return "OVERS  none yet"
    lines = []
    for over in snap.overs[:count]:
        at = time.strftime("%H:%M:%S", time.localtime(over.at))
        cut = "  cut by a moderator" if over.cut else ""
        lines.append(f"{at}  {over.speaker.name:<16} {over.verdict:<9} {over.seconds:5.1f} s{cut}")
    return "OVERS  " + "\n       ".join(lines)


class ConfirmRemove(ModalScreen[bool]):
    """Removing a member cannot be undone: it rotates the room key. Ask first."""

    BINDINGS = [  # noqa: RUF012 (textual's class attribute)
        Binding("y", "answer(True)", "Remove"),
        Binding("n", "answer(False)", "Keep"),
        Binding("escape", "answer(False)", "Keep", show=False),
    ]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.member_name = name

    def compose(self) -> ComposeResult:
        yield Static(
            f"Remove {self.member_name} from the room?\n"
            "A new room key goes to everyone else; they cannot come back without a new "
            "invite.\n\n  y  remove      n  keep",
            id="confirm",
        )

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class ConsoleApp(App[None]):
    """One member's console for one room."""

    TITLE = "relay console"
    CSS = """
    #top { background: $primary-background; padding: 0 1; }
    #floor { padding: 0 1; text-style: bold; }
    #level, #health, #overs, #status { padding: 0 1; }
    #lists { height: 1fr; min-height: 6; }
    #lists Vertical { width: 1fr; }
    #lists Label { padding: 0 1; text-style: bold; }
    DataTable { height: 1fr; }
    #log { height: 7; border-top: solid $primary; }
    #status { color: $warning; }
    ConfirmRemove { align: center middle; }
    #confirm { width: 64; padding: 1 2; border: thick $error; background: $surface; }
    """
    BINDINGS = [  # noqa: RUF012 (textual's class attribute)
        Binding("space", "ptt", "Talk", priority=True),
        Binding("h", "hand", "Hand"),
        Binding("q", "quit", "Quit"),
        Binding("g", "grant", "Grant"),
        Binding("r", "revoke", "Revoke"),
        Binding("m", "mute", "Mute/unmute"),
        Binding("x", "remove", "Remove"),
        Binding("a", "appoint", "Appoint"),
        Binding("tab", "focus_next", "Hands/Members", show=False),
    ]
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, session: RoomSession, *, ptt: str = "toggle") -> None:
        super().__init__()
        self.session = session
        self.ptt_mode = ptt
        self._release_at = 0.0
        self._logged: LogLine | None = None
        self._rows: dict[str, list[tuple[str, ...]]] = {}
        self.last_snapshot: Snapshot | None = None
        self.status = ""

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield Static(id="top")
        yield Static(id="floor")
        yield Static(id="level")
        with Horizontal(id="lists"):
            with Vertical():
                yield Label("HANDS", id="hands-label")
                yield DataTable(id="hands", cursor_type="row", zebra_stripes=True)
            with Vertical():
                yield Label("MEMBERS", id="members-label")
                yield DataTable(id="members", cursor_type="row", zebra_stripes=True)
        yield Static(id="overs")
        yield Static(id="health")
        yield Static(id="status")
        yield Log(id="log", max_lines=500)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#hands", DataTable).add_columns("name", "waiting")
        self.query_one("#members", DataTable).add_columns("name", "id", "state")
        self.redraw()
        self.set_interval(REFRESH, self.redraw)
        if self.ptt_mode == "hold":
            self.set_interval(0.1, self._check_release)
        self.query_one("#hands", DataTable).focus()

    # ------------------------------------------------------------------ drawing
    def redraw(self) -> None:
        if self.screen is not self.screen_stack[0] or not self.is_running:
            return  # a question is on screen, or the console is closing
        with contextlib.suppress(NoMatches):  # torn down under us while quitting
            self._draw(self.session.snapshot())

    def _draw(self, snap: Snapshot) -> None:
        if self.last_snapshot is not None and self.last_snapshot.moderator != snap.moderator:
            self.refresh_bindings()  # appointed: the moderator keys appear
        self.last_snapshot = snap
        role = "moderator" if snap.moderator else "member"
        if snap.listen_only:
            role += " · listen-only"
        hand = " · your hand is up" if snap.hand_raised else ""
        self.query_one("#top", Static).update(
            f"relay console · {snap.room} · {snap.me.name} ({role}) · {snap.link.url} · "
            f"key epoch {snap.epoch}{hand}"
        )
        self.query_one("#floor", Static).update(floor_text(snap))
        source = "you" if snap.talking else "heard"
        self.query_one("#level", Static).update(f"LEVEL  {meter(snap.level)}  ({source})")
        self._fill(
            "hands",
            [(h.member.id, h.member.name, clock_text(h.waiting)) for h in snap.hands],
        )
        self._fill(
            "members",
            [(m.id, m.name, m.short, member_state(m)) for m in snap.members],
        )
        self.query_one("#hands-label", Label).update(f"HANDS ({len(snap.hands)})")
        self.query_one("#members-label", Label).update(f"MEMBERS ({len(snap.members)})")
        self.query_one("#overs", Static).update(overs_text(snap))
        notice = f"\nNOTICE  {snap.notices[-1]}" if snap.notices else ""
        self.query_one("#health", Static).update(health_text(snap) + notice)
        self.query_one("#status", Static).update(self.status)
        self._write_log(snap.log)

    def _fill(self, table_id: str, rows: list[tuple[str, ...]]) -> None:
        if self._rows.get(table_id) == rows:
            return
        self._rows[table_id] = rows
        table = self.query_one(f"#{table_id}", DataTable)
        selected = self._selected_in(table)
        table.clear()
        for key, *cells in rows:
            table.add_row(*cells, key=key)
        keys = [key for key, *_ in rows]
        if selected in keys:
            table.move_cursor(row=keys.index(selected))

    @staticmethod
    def _selected_in(table: DataTable) -> str | None:
        if table.row_count == 0:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        except Exception:  # the cursor is outside the rows
            return None
        return key.value

    def _write_log(self, lines: tuple[LogLine, ...]) -> None:
        log = self.query_one("#log", Log)
        start = 0
        if self._logged is not None:
            for i in range(len(lines) - 1, -1, -1):
                if lines[i] is self._logged:
                    start = i + 1
                    break
        for line in lines[start:]:
            at = time.strftime("%H:%M:%S", time.localtime(line.at))
            log.write_line(f"{at}  {line.text}")
        if lines:
            self._logged = lines[-1]

    def say(self, text: str) -> None:
        """One line in the status bar (what the last key did, or why it could not)."""
        self.status = text
        self.query_one("#status", Static).update(text)

    # ------------------------------------------------------------------ keys
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in TRANSMIT_KEYS and self.session.listen_only:
            return False
        return not (action in MODERATOR_KEYS and not self.session.is_moderator)

    def selected(self) -> str | None:
        """The member under the cursor: in the focused list, else the first hand."""
        hands = self.query_one("#hands", DataTable)
        members = self.query_one("#members", DataTable)
        if self.focused is members:
            return self._selected_in(members)
        return self._selected_in(hands) or (
            self._selected_in(members) if self.focused is not hands else None
        )

    def _do(self, call: Callable[[], Awaitable[str]]) -> None:
        async def run() -> None:
            try:
                self.say(await call())
            except (UsageError, LinkError) as exc:
                self.say(f"! {exc}")
            self.redraw()

        self.run_worker(run(), exclusive=False, group="actions")

    def action_ptt(self) -> None:
        if self.ptt_mode == "hold":
            self._release_at = time.monotonic() + HOLD_GRACE
            if not self.session.talking:
                self._do(self._hold_start)
            return
        self._do(self.session.ptt_toggle)

    async def _hold_start(self) -> str:
        said = await self.session.ptt_start()
        # Taking the floor takes a moment: the grace runs from when talking began.
        self._release_at = max(self._release_at, time.monotonic() + HOLD_GRACE)
        return said

    def _check_release(self) -> None:
        if self.session.talking and time.monotonic() > self._release_at:
            self._do(self.session.ptt_stop)

    def action_hand(self) -> None:
        self._do(self.session.toggle_hand)

    def action_grant(self) -> None:
        who = self._selected_in(self.query_one("#hands", DataTable))
        if self.focused is self.query_one("#members", DataTable):
            who = self.selected()
        self._do(lambda: self.session.grant(who))

    def action_revoke(self) -> None:
        self._do(self.session.revoke)

    def _need_member(self) -> str | None:
        who = self.selected()
        if who is None:
            self.say("! select a member first (tab switches between hands and members)")
        return who

    def action_mute(self) -> None:
        who = self._need_member()
        if who is not None:
            self._do(lambda: self.session.toggle_mute(who))

    def action_appoint(self) -> None:
        who = self._need_member()
        if who is not None:
            self._do(lambda: self.session.appoint(who))

    def action_remove(self) -> None:
        who = self._need_member()
        if who is None:
            return
        try:
            name = self.session.view(who).name
        except UsageError as exc:
            self.say(f"! {exc}")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._do(lambda: self.session.remove(who))
            else:
                self.say(f"kept {name}")

        self.push_screen(ConfirmRemove(name), answered)
