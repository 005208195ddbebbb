// The room page: state from the gateway over a WebSocket, speech played with Web Audio,
// the microphone sent while push-to-talk is held. Plain JavaScript, no build step.
"use strict";

const RATE = 8000;
const $ = (id) => document.getElementById(id);
const relay = (window.relay = { state: null, played: [], recording: false, results: [] });
let ws = null;
let ctx = null;
let player = null;
let mic = null;
let micOn = false;
let pending = [];
let myId = null;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function button(text, onClick) {
  const b = el("button", text, "small");
  b.type = "button";
  b.addEventListener("click", onClick);
  return b;
}

function act(action, member) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  const msg = { type: "act", action: action };
  if (member) msg.member = member;
  ws.send(JSON.stringify(msg));
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(`${scheme}//${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (e) => {
    if (typeof e.data === "string") {
      const msg = JSON.parse(e.data);
      if (msg.type === "state") render(msg);
      else if (msg.type === "result") result(msg);
    } else {
      speech(e.data);
    }
  };
  ws.onclose = () => {
    $("status").textContent = "disconnected from the gateway";
    relay.closed = true;
  };
}

function result(msg) {
  relay.results.push(msg);
  $("status").textContent = msg.text;
  $("status").className = msg.ok ? "" : "forged";
  if (msg.action === "talk" && msg.ok) startMic();
  if (msg.action === "talk" && !msg.ok) stopMic();
}

// ------------------------------------------------------------------ speech out
function speech(buffer) {
  const view = new DataView(buffer);
  if (view.getUint8(0) !== 1) return;
  const pcm = new Int16Array(buffer.slice(9));
  if (!player) return;
  const f = new Float32Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) f[i] = pcm[i] / 32768;
  player.port.postMessage({ pcm: f });
}

let audioReady = null;

function audio() {
  // One audio graph per page; every caller waits for the same one to be ready.
  if (!audioReady) {
    audioReady = (async () => {
      ctx = new AudioContext({ sampleRate: RATE });
      await ctx.audioWorklet.addModule("/static/audio.js");
      player = new AudioWorkletNode(ctx, "relay-player");
      player.port.onmessage = (e) => {
        if (relay.recording) relay.played.push(e.data);
      };
      player.connect(ctx.destination);
      await ctx.resume();
      return ctx;
    })();
  }
  return audioReady;
}

relay.record = async (on) => {
  await audio();
  relay.recording = on;
  player.port.postMessage({ record: on });
};

relay.playedPcm = () => {
  let n = 0;
  for (const c of relay.played) n += c.length;
  const out = new Array(n);
  let i = 0;
  for (const c of relay.played) for (const x of c) out[i++] = Math.round(x * 32767);
  return out;
};

// ------------------------------------------------------------------ microphone in
async function ensureMic() {
  await audio();
  if (mic) return;
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  const source = ctx.createMediaStreamSource(stream);
  mic = new AudioWorkletNode(ctx, "relay-mic");
  const sink = ctx.createGain();
  sink.gain.value = 0;
  source.connect(mic).connect(sink).connect(ctx.destination);
  mic.port.onmessage = (e) => {
    if (!micOn) return;
    pending.push(e.data);
    let n = 0;
    for (const c of pending) n += c.length;
    if (n < 320) return;
    const out = new Int16Array(n);
    let i = 0;
    for (const c of pending) for (const x of c) out[i++] = Math.max(-32768, Math.min(32767, Math.round(x * 32767)));
    pending = [];
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(out.buffer);
  };
}

function startMic() {
  micOn = true;
  pending = [];
  if (mic) mic.port.postMessage({ on: true });
  $("ptt").classList.add("on");
}

function stopMic() {
  micOn = false;
  if (mic) mic.port.postMessage({ on: false });
  $("ptt").classList.remove("on");
}

async function pttDown(e) {
  e.preventDefault();
  if (micOn) return;
  try {
    await ensureMic();
  } catch (err) {
    $("status").textContent = `no microphone: ${err}`;
    return;
  }
  act("talk");
}

function pttUp() {
  if (!micOn) return;
  stopMic();
  act("stop");
}

// ------------------------------------------------------------------ drawing the room
function name(m) {
  if (!m) return "nobody";
  let text = m.name;
  if (m.moderator) text += " (moderator)";
  if (m.id === myId) text += " (you)";
  return text;
}

function render(msg) {
  relay.state = msg;
  const room = msg.room;
  const you = msg.you;
  myId = you.me.id;
  $("room").textContent = `relay · ${room.room}`;
  $("you").textContent = `you are ${you.name}` + (you.moderator ? ", a moderator" : "") + (you.listen_only ? " (listen only)" : "");
  const link = room.link;
  const used = link.airtime_budget ? Math.round((100 * link.airtime_used) / link.airtime_budget) : 0;
  const loss = link.loss === null ? "–" : `${Math.round(link.loss * 100)} %`;
  $("link").textContent = `${link.radio} · ${link.alive ? "up" : "DOWN"} · loss ${loss} · airtime ${used} % of budget` + (link.rssi !== null ? ` · RSSI ${link.rssi} dBm` : "") + (link.snr !== null ? ` · SNR ${link.snr} dB` : "");

  const floor = $("floor");
  floor.textContent = "";
  if (room.floor.holder) {
    floor.append(el("span", `${name(room.floor.holder)} · ${Math.round(room.floor.held)} s held, ${Math.round(room.floor.left)} s left`));
    if (you.moderator) floor.append(button("Revoke", () => act("revoke")));
  } else {
    floor.append(el("span", "the floor is free"));
  }
  $("level").style.width = `${Math.round(room.level * 100)}%`;

  const hands = $("hands");
  hands.textContent = "";
  if (!room.hands.length) hands.append(el("li", "no hands raised", "muted"));
  for (const h of room.hands) {
    const li = el("li", `${name(h.member)} · waiting ${Math.round(h.waiting)} s `);
    if (you.moderator) li.append(button("Grant", () => act("grant", h.member.id)));
    hands.append(li);
  }

  const members = $("members");
  members.textContent = "";
  for (const m of room.members) {
    const flags = [m.muted ? "muted" : "", m.removed ? "removed" : "", m.speaking ? "speaking" : "", m.hand ? "hand up" : ""].filter(Boolean).join(", ");
    const li = el("li", name(m) + (flags ? ` · ${flags}` : ""));
    li.dataset.id = m.id;
    if (you.moderator && m.id !== myId && !m.removed) {
      li.append(button(m.muted ? "Unmute" : "Mute", () => act(m.muted ? "unmute" : "mute", m.id)));
      li.append(button("Remove", () => { if (confirm(`Remove ${m.name}? The room key rotates without them.`)) act("remove", m.id); }));
      if (!m.moderator) li.append(button("Appoint", () => act("appoint", m.id)));
    }
    members.append(li);
  }

  const overs = $("overs");
  overs.textContent = "";
  for (const o of room.overs.slice(0, 20)) {
    const li = el("li", `${name(o.speaker)} · ${o.seconds.toFixed(1)} s · `);
    li.append(el("span", o.verdict, o.verdict));
    overs.append(li);
  }

  const log = $("log");
  log.textContent = "";
  for (const line of room.log.slice(-12).reverse()) log.append(el("li", line.text));

  $("hand").textContent = you.hand_raised ? "Lower hand" : "Raise hand";
  $("hand").disabled = you.listen_only;
  const mine = room.floor.holder && room.floor.holder.id === myId;
  const canTalk = !you.listen_only && (mine || (you.moderator && !room.floor.holder));
  $("ptt").disabled = !canTalk && !micOn;
}

document.addEventListener("DOMContentLoaded", () => {
  $("listen").addEventListener("click", async () => {
    await audio();
    $("listen").textContent = "Listening";
    $("listen").disabled = true;
  });
  $("hand").addEventListener("click", () => act(relay.state && relay.state.you.hand_raised ? "lower" : "raise"));
  const ptt = $("ptt");
  ptt.addEventListener("pointerdown", pttDown);
  ptt.addEventListener("pointerup", pttUp);
  ptt.addEventListener("pointerleave", pttUp);
  connect();
});
