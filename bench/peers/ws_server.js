// The benchmark's Node.js comparison peer: a minimal signaling relay node on `ws` and
// `ioredis` that speaks this project's wire protocol (docs/protocol.md), so bench/gen.py
// drives it unchanged. It does what bench/peers/go_relay does, no more: membership in a
// Redis set per room, one pub/sub channel per room, to which a node is subscribed while
// it holds a member of the room.
//
// Envelope on a room channel: one mode byte, an id, '\n', then the frame as sent to clients.
// Mode 't': deliver to the member id only; 'x': to every member but id; 'a': to every member.
// The frame is encoded once, at the sending node; receiving nodes only route the bytes.
"use strict";
const http = require("http");
const { WebSocketServer } = require("ws");
const Redis = require("ioredis");

const PORT = Number(process.env.PORT);
const HOST = process.env.HOST || "127.0.0.1";
const REDIS_URL = process.env.REDIS_URL;
const NODE_ID = process.env.NODE_ID || "ws";
const PREFIX = "bench:ws:";
const MAX_BUFFERED = 1 << 20; // bytes waiting for a slow client before it is closed
const ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const PONG = '{"type":"pong"}';

if (!PORT || !REDIS_URL) {
  console.error("PORT and REDIS_URL are required");
  process.exit(1);
}
const pub = new Redis(REDIS_URL);
const sub = new Redis(REDIS_URL);
const rooms = new Map(); // room -> {peers: Map(peer -> ws), subscribed: Promise}

const channel = (room) => `${PREFIX}ch:${room}`;
const envelope = (mode, id, frame) => Buffer.concat([Buffer.from(mode + id + "\n"), Buffer.from(frame)]);
const errorFrame = (code, message) =>
  JSON.stringify({ type: "error", from: "server", data: { code, message } });

// send never blocks: a client that lets MAX_BUFFERED bytes pile up is closed.
function send(ws, frame) {
  if (ws.readyState !== ws.OPEN) return;
  if (ws.bufferedAmount > MAX_BUFFERED) {
    ws.terminate();
    return;
  }
  ws.send(frame, { binary: false });
}

// Every pub/sub message goes to the local members its envelope names.
sub.on("messageBuffer", (ch, data) => {
  const room = rooms.get(ch.toString().slice(PREFIX.length + 3));
  const nl = data.indexOf(10);
  if (room === undefined || nl < 1) return;
  const mode = data[0];
  const id = data.toString("utf8", 1, nl);
  const frame = data.subarray(nl + 1);
  if (mode === 0x74) { // 't'
    const ws = room.peers.get(id);
    if (ws !== undefined) send(ws, frame);
    return;
  }
  for (const [peer, ws] of room.peers) {
    if (mode === 0x61 || peer !== id) send(ws, frame); // 'a', or 'x' and not the sender
  }
});

// A room entry lives while it has a member or a join in progress; the last one out
// unsubscribes. ioredis sends (UN)SUBSCRIBE in call order, so Redis sees the map's order.
function enter(name) {
  let room = rooms.get(name);
  if (room === undefined) {
    room = { peers: new Map(), pending: 0, subscribed: sub.subscribe(channel(name)) };
    rooms.set(name, room);
  }
  room.pending++;
  return room;
}

function release(name, room) {
  if (room.peers.size === 0 && room.pending === 0 && rooms.get(name) === room) {
    rooms.delete(name);
    sub.unsubscribe(channel(name)).catch((err) => console.error("unsubscribe", err.message));
  }
}

async function join(ws, name, peer) {
  const room = enter(name);
  let members;
  try {
    await room.subscribed;
    const key = `${PREFIX}room:${name}`;
    const [[e1], [e2, got]] = await pub.multi().sadd(key, peer).smembers(key).exec();
    if (e1 || e2) throw e1 || e2;
    members = got;
  } catch (err) {
    console.error(`join ${name}/${peer}:`, err.message);
    room.pending--;
    release(name, room);
    ws.close(1011, "join failed");
    return false;
  }
  room.pending--;
  room.peers.set(peer, ws);
  const peers = members.filter((p) => p !== peer);
  send(ws, JSON.stringify({ type: "welcome", room: name, from: "server", to: peer,
    data: { peer, peers, node: NODE_ID } }));
  const notice = JSON.stringify({ type: "new-peer", room: name, from: "server", data: peer });
  pub.publish(channel(name), envelope("x", peer, notice))
    .catch((err) => console.error(`new-peer ${name}/${peer}:`, err.message));
  return true;
}

async function leave(name, peer, ws) {
  const room = rooms.get(name);
  if (room !== undefined && room.peers.get(peer) === ws) {
    room.peers.delete(peer);
    release(name, room);
  }
  const notice = JSON.stringify({ type: "peer-left", room: name, from: "server", data: peer });
  await pub.multi().srem(`${PREFIX}room:${name}`, peer)
    .publish(channel(name), envelope("x", peer, notice)).exec();
}

function onMessage(ws, name, peer, data, isBinary) {
  if (isBinary) return send(ws, errorFrame("bad-message", "frames are JSON text"));
  let msg;
  try {
    msg = JSON.parse(data);
  } catch (err) {
    return send(ws, errorFrame("bad-message", "not a JSON object: " + err.message));
  }
  if (msg === null || typeof msg !== "object") {
    return send(ws, errorFrame("bad-message", "not a JSON object"));
  }
  let env;
  switch (msg.type) {
    case "offer": case "answer": case "ice":
      if (typeof msg.to !== "string" || msg.to === "") {
        return send(ws, errorFrame("bad-message", "a relay needs 'to'"));
      }
      env = envelope("t", msg.to, JSON.stringify(
        { type: msg.type, room: name, from: peer, to: msg.to, data: msg.data }));
      break;
    case "chat":
      env = envelope("a", "", JSON.stringify({ type: "chat", room: name, from: peer, data: msg.data }));
      break;
    case "ping":
      return send(ws, PONG);
    default:
      return send(ws, errorFrame("bad-message", `unknown type ${JSON.stringify(msg.type)}`));
  }
  pub.publish(channel(name), env).catch(() => send(ws, errorFrame("unavailable", "redis is unavailable")));
}

const server = http.createServer((req, res) => {
  const ok = req.url === "/ready" ? "ready" : req.url === "/health" ? "ok" : null;
  res.writeHead(ok ? 200 : 404, { "Content-Type": "application/json" });
  res.end(ok ? `{"status":"${ok}"}` : "");
});
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 1 << 20 });

server.on("upgrade", (req, socket, head) => {
  const parts = req.url.split("?")[0].replace(/^\/ws\//, "").split("/");
  if (!req.url.startsWith("/ws/") || parts.length !== 2 || !parts.every((p) => ID.test(p))
      || parts.includes("server")) {
    socket.end("HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
      + '{"error":{"code":"bad-path","message":"GET /ws/{room}/{peer}"}}');
    return;
  }
  const [name, peer] = parts;
  wss.handleUpgrade(req, socket, head, (ws) => {
    // Frames that arrive while the join is under way wait, in order, behind it.
    const early = [];
    let joined = false;
    let closed = false;
    ws.on("message", (data, isBinary) => {
      if (joined) onMessage(ws, name, peer, data, isBinary);
      else early.push([data, isBinary]);
    });
    ws.on("error", () => ws.terminate());
    ws.on("close", () => {
      closed = true;
      if (joined) leave(name, peer, ws).catch((err) => console.error("leave", err.message));
    });
    join(ws, name, peer).then((ok) => {
      if (!ok) return;
      joined = true;
      if (closed) return void leave(name, peer, ws).catch((err) => console.error("leave", err.message));
      for (const [data, isBinary] of early) onMessage(ws, name, peer, data, isBinary);
    }).catch((err) => {
      console.error(`join ${name}/${peer}:`, err.message);
      ws.terminate();
    });
  });
});

server.listen(PORT, HOST);
process.on("SIGTERM", () => process.exit(0));
process.on("SIGINT", () => process.exit(0));
