// The demo page: join the room named in the URL (?room=r1 or #r1), call everyone in it,
// chat. `window.demo` exposes the state for curious users and for the browser tests.

import { Mesh } from "./mesh.js";
import { Signaling } from "./signaling.js";

const ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const $ = (selector) => document.querySelector(selector);

function randomId(prefix) {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return prefix + [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

// Room from ?room= or #room; a fresh one (written back into the URL, to share) otherwise.
function roomFromUrl() {
  const url = new URL(location.href);
  let room = url.searchParams.get("room") || decodeURIComponent(url.hash.slice(1));
  if (!ID.test(room)) {
    room = randomId("room-");
    url.searchParams.set("room", room);
    url.hash = "";
    history.replaceState(null, "", url);
  }
  return room;
}

// The peer id a token was issued for (its `sub`; the node checks the signature).
function tokenSubject(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload)).sub ?? null;
  } catch {
    return null;
  }
}

// ?peer= names this tab, and a token's subject must be its peer id; otherwise a random id
// kept for the tab's life (sessionStorage), so a reload comes back as the same peer.
function peerFromUrl(token) {
  const wanted = new URL(location.href).searchParams.get("peer") ||
    (token && tokenSubject(token));
  if (wanted && ID.test(wanted) && wanted !== "server") return wanted;
  let peer = sessionStorage.getItem("signaling-peer");
  if (!peer || !ID.test(peer)) {
    peer = randomId("p-");
    sessionStorage.setItem("signaling-peer", peer);
  }
  return peer;
}

// Which node served this page: the Server-Timing entry the node adds to it.
function pageNode() {
  const [nav] = performance.getEntriesByType("navigation");
  return nav?.serverTiming?.find((entry) => entry.name === "node")?.description ?? "?";
}

// STUN only where it can help: between two machines. On loopback (both peers here) host
// candidates suffice, and a closed network has no STUN server to reach.
function defaultIceServers() {
  const host = location.hostname;
  const loopback = host === "localhost" || host === "[::1]" || host.startsWith("127.");
  return loopback ? [] : [{ urls: "stun:stun.l.google.com:19302" }];
}

async function localMedia() {
  try {
    return await navigator.mediaDevices.getUserMedia({
      audio: true,
      // Small: a mesh sends one copy of its video to every other peer.
      video: { width: { ideal: 320 }, height: { ideal: 240 }, frameRate: { ideal: 15 } },
    });
  } catch (err) {
    console.warn("no camera or microphone, receiving only:", err);
    return null;
  }
}

function tile(peer) {
  let figure = document.querySelector(`figure[data-peer="${CSS.escape(peer)}"]`);
  if (!figure) {
    figure = document.createElement("figure");
    figure.dataset.peer = peer;
    figure.append(document.createElement("video"), document.createElement("figcaption"));
    figure.querySelector("video").autoplay = true;
    figure.querySelector("video").playsInline = true;
    $("#tiles").append(figure);
  }
  return figure;
}

function showLink(mesh, link) {
  const figure = tile(link.peer);
  if (mesh.links.get(link.peer) !== link) {
    // A replaced or dropped link: remove the tile unless a newer link owns it.
    if (!mesh.links.has(link.peer)) figure.remove();
    return;
  }
  const video = figure.querySelector("video");
  if (video.srcObject !== link.stream) video.srcObject = link.stream;
  figure.dataset.state = link.state;
  figure.querySelector("figcaption").textContent = `${link.peer} · ${link.state}`;
}

function addChatLine(demo, from, text) {
  demo.chat.push({ from, text });
  const line = document.createElement("li");
  const who = document.createElement("b");
  who.textContent = from === demo.peer ? "you" : from;
  line.append(who, ": ", String(text));
  $("#chat-log").append(line);
  line.scrollIntoView({ block: "end" });
}

function setStatus(demo, text, state) {
  demo.status = state;
  $("#status").textContent = text;
  document.body.dataset.status = state;
}

function wire(demo, signaling, mesh) {
  signaling.addEventListener("welcome", ({ detail }) => {
    demo.node = detail.data.node;
    demo.welcomes += 1;
    $("#node").textContent = demo.node;
    document.body.dataset.node = demo.node;
    if (detail.data.resumed && mesh.me === detail.data.peer) {
      demo.resumes += 1;
      mesh.keep(detail.data.peers);
    } else {
      mesh.reset(detail.data.peer, detail.data.peers,
                 detail.data.iceServers ?? defaultIceServers());
    }
  });
  signaling.addEventListener("new-peer", ({ detail }) => mesh.add(detail.data));
  signaling.addEventListener("peer-left", ({ detail }) => mesh.drop(detail.data));
  for (const type of ["offer", "answer", "ice"]) {
    signaling.addEventListener(type, ({ detail }) => mesh.receive(detail));
  }
  signaling.addEventListener("chat", ({ detail }) => addChatLine(demo, detail.from, detail.data));
  signaling.addEventListener("error", ({ detail }) => console.warn("node says", detail.data));
  signaling.addEventListener("status", ({ detail }) => {
    if (detail.state === "open") setStatus(demo, "connected", "open");
    else if (detail.state === "connecting") setStatus(demo, "connecting…", "connecting");
    else if (detail.state === "closed") {
      demo.closes.push(detail.code);
      setStatus(demo, `disconnected (${detail.code}), retrying in ` +
                      `${(detail.retryIn / 1000).toFixed(1)} s`, "closed");
    } else {
      demo.closes.push(detail.code);
      setStatus(demo, `stopped: ${detail.reason}`, "stopped");
    }
  });
  mesh.addEventListener("change", ({ detail }) => showLink(mesh, detail));
  $("#chat-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("#chat-input");
    if (input.value.trim() && signaling.send("chat", null, input.value)) input.value = "";
  });
  $("#new-peer").addEventListener("click", () => {
    sessionStorage.removeItem("signaling-peer");
    location.reload();
  });
  addEventListener("pagehide", () => signaling.stop());
}

async function main() {
  const room = roomFromUrl();
  const token = new URL(location.href).searchParams.get("token");
  const peer = peerFromUrl(token);
  const demo = { room, peer, node: null, pageNode: pageNode(), status: "starting",
                 welcomes: 0, resumes: 0, closes: [], chat: [] };
  window.demo = demo;
  $("#room").textContent = room;
  $("#me").textContent = peer;
  $("#page-node").textContent = demo.pageNode;
  const localStream = await localMedia();
  const own = tile(peer);
  own.classList.add("own");
  own.querySelector("video").muted = true;  // never hear yourself
  own.querySelector("video").srcObject = localStream;
  own.querySelector("figcaption").textContent = `${peer} (you)`;
  const signaling = new Signaling({ room, peer, token });
  const mesh = new Mesh({ signaling, localStream });
  Object.assign(demo, { signaling, mesh, localStream });
  wire(demo, signaling, mesh);
  signaling.start();
}

main();
