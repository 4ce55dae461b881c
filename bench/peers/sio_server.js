// Node.js socket.io 4 with @socket.io/redis-adapter: the peer system the benchmark compares
// against, with the same semantics as a signaling node. Events (client -> server):
//   join {room, peer}, ack {peer, peers}  membership in a Redis set, like ours
//   signal {type, to, data}                to one peer of the room (a per-peer room)
//   chat data                              to every peer of the room, the sender included
// Server -> client: "signal" and "chat" carry {type, room, from, [to,] data}; "new-peer" and
// "peer-left" carry the peer id. GET /ready answers 200 for the launcher.
"use strict";
const http = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const PORT = Number(process.env.PORT);
const HOST = process.env.HOST || "127.0.0.1";
const REDIS_URL = process.env.REDIS_URL;
const PREFIX = "bench:sio:";

async function main() {
  const pub = createClient({ url: REDIS_URL });
  const sub = pub.duplicate();
  const store = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect(), store.connect()]);
  const server = http.createServer((req, res) => {
    res.writeHead(req.url === "/ready" || req.url === "/health" ? 200 : 404);
    res.end();
  });
  const io = new Server(server, {
    adapter: createAdapter(pub, sub),
    transports: ["websocket"],
    serveClient: false,
    perMessageDeflate: false,
  });
  io.on("connection", (socket) => {
    socket.on("join", async (msg, ack) => {
      const { room, peer } = msg;
      const key = `${PREFIX}room:${room}`;
      const [, members] = await store.multi().sAdd(key, peer).sMembers(key).exec();
      socket.data.room = room;
      socket.data.peer = peer;
      socket.join([room, `${room}/${peer}`]);
      socket.to(room).emit("new-peer", peer);
      ack({ peer, peers: members.filter((p) => p !== peer) });
    });
    socket.on("signal", (msg) => {
      const { room, peer } = socket.data;
      io.to(`${room}/${msg.to}`).emit("signal",
        { type: msg.type, room, from: peer, to: msg.to, data: msg.data });
    });
    socket.on("chat", (data) => {
      const { room, peer } = socket.data;
      io.to(room).emit("chat", { type: "chat", room, from: peer, data });
    });
    socket.on("disconnect", async () => {
      const { room, peer } = socket.data;
      if (room === undefined) return;
      await store.sRem(`${PREFIX}room:${room}`, peer);
      io.to(room).emit("peer-left", peer);
    });
  });
  server.listen(PORT, HOST);
  process.on("SIGTERM", () => process.exit(0));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
