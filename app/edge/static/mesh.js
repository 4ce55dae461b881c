// A full mesh: one RTCPeerConnection per other peer of the room, negotiated with the
// "perfect negotiation" pattern (W3C WebRTC spec, section 10.7).
//
// Both sides of a pair add their tracks and offer whenever negotiation is needed, so two
// offers can cross ("glare"). The peer with the smaller id is polite: on a collision it
// rolls its own offer back and answers; the impolite one ignores the incoming offer and
// waits for the answer to its own. ICE candidates trickle as they are found.
//
// One guard beyond the pattern: Chromium (seen in 156) never gathers candidates again on a
// connection whose offer was rolled back before its gathering began, so that pair stays
// "new" for ever. The polite side therefore lets its own offer's gathering start (its
// first candidate, 1 s at most) before it rolls that offer back.

let serial = 0;

export class PeerLink extends EventTarget {
  constructor({ me, peer, iceServers, localStream, send }) {
    super();
    this.peer = peer;
    this.serial = ++serial;  // tells a renegotiated link from the one it replaced (tests)
    this.polite = me < peer;
    this.send = send;
    this.stream = new MediaStream();
    this.pc = new RTCPeerConnection({ iceServers });
    this.makingOffer = false;
    this.offering = Promise.resolve();  // our latest offer, until it is sent
    this.gathered = 0;  // local candidates found since our latest offer
    this.gatheringStarted = null;  // resolves a wait for the first of them
    this.ignoreOffer = false;
    this.settingAnswer = false;
    this.collisions = 0;  // offers that crossed ours
    // Frames of one peer are handled one at a time, in arrival order: an ICE candidate
    // must not overtake the description it belongs to.
    this.queue = Promise.resolve();
    this.#wire(localStream);
  }

  #wire(localStream) {
    const pc = this.pc;
    if (localStream) {
      for (const track of localStream.getTracks()) pc.addTrack(track, localStream);
    } else {
      // No camera or microphone: still receive the others.
      pc.addTransceiver("audio", { direction: "recvonly" });
      pc.addTransceiver("video", { direction: "recvonly" });
    }
    pc.ontrack = ({ track }) => {
      this.stream.addTrack(track);
      this.#changed();
    };
    pc.onicecandidate = ({ candidate }) => {
      this.gathered += 1;
      this.gatheringStarted?.();
      if (candidate) this.send("ice", this.peer, candidate.toJSON());
    };
    pc.onnegotiationneeded = () => {
      this.offering = this.#offer();
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed") pc.restartIce();
      this.#changed();
    };
  }

  async #offer() {
    const pc = this.pc;
    try {
      this.makingOffer = true;
      this.gathered = 0;
      await pc.setLocalDescription();
      this.send(pc.localDescription.type, this.peer, pc.localDescription.toJSON());
    } catch (err) {
      console.warn("offer to", this.peer, err);
    } finally {
      this.makingOffer = false;
    }
  }

  // Resolves once our offer's ICE gathering has begun (or has nothing to gather).
  async #letGatheringStart() {
    await this.offering;
    if (this.gathered > 0 || this.pc.iceGatheringState === "complete") return;
    await new Promise((resolve) => {
      this.gatheringStarted = resolve;
      setTimeout(resolve, 1000);
    });
    this.gatheringStarted = null;
  }

  // A frame from the peer: "offer", "answer" (data: a session description) or "ice".
  receive(type, data) {
    this.queue = this.queue.then(() => this.#handle(type, data)).catch((err) => {
      console.warn(type, "from", this.peer, err);
    });
    return this.queue;
  }

  async #handle(type, data) {
    const pc = this.pc;
    if (type === "ice") {
      try {
        await pc.addIceCandidate(data);
      } catch (err) {
        if (!this.ignoreOffer) throw err;  // a candidate of the offer we ignored
      }
      return;
    }
    const description = { type: data.type, sdp: data.sdp };
    const readyForOffer = !this.makingOffer &&
      (pc.signalingState === "stable" || this.settingAnswer);
    const collision = description.type === "offer" && !readyForOffer;
    if (collision) this.collisions += 1;
    this.ignoreOffer = !this.polite && collision;
    if (this.ignoreOffer) return;
    if (collision) await this.#letGatheringStart();
    this.settingAnswer = description.type === "answer";
    await pc.setRemoteDescription(description);  // rolls our own offer back if needed
    this.settingAnswer = false;
    if (description.type === "offer") {
      await pc.setLocalDescription();
      this.send("answer", this.peer, pc.localDescription.toJSON());
    }
  }

  get state() {
    return this.pc.connectionState;
  }

  close() {
    this.pc.close();
    this.#changed();
  }

  #changed() {
    this.dispatchEvent(new Event("change"));
  }
}

// Every link of this page, keyed by peer id; `reset` starts over after a (re)join.
export class Mesh extends EventTarget {
  constructor({ signaling, localStream }) {
    super();
    this.signaling = signaling;
    this.localStream = localStream;
    this.me = null;
    this.iceServers = [];
    this.links = new Map();
  }

  // A welcome: our view of the room is exactly its `peers`. After a reconnect the others
  // saw us leave and come back, so every old connection is gone on their side too.
  reset(me, peers, iceServers) {
    this.me = me;
    this.iceServers = iceServers;
    for (const peer of [...this.links.keys()]) this.drop(peer);
    for (const peer of peers) this.add(peer);
  }

  // A resumed session: nobody saw us leave, so every call goes on. Only links to peers
  // that are gone now are dropped; what happened meanwhile follows as frames.
  keep(peers) {
    const present = new Set(peers);
    for (const peer of [...this.links.keys()]) if (!present.has(peer)) this.drop(peer);
  }

  add(peer) {
    this.drop(peer);  // the same peer id again: a reconnect or a reload
    const send = (type, to, data) => this.signaling.send(type, to, data);
    const link = new PeerLink({ me: this.me, peer, iceServers: this.iceServers,
                                localStream: this.localStream, send });
    this.links.set(peer, link);
    link.addEventListener("change", () => this.#changed(link));
    this.#changed(link);
    return link;
  }

  drop(peer) {
    const link = this.links.get(peer);
    if (!link) return;
    this.links.delete(peer);
    link.close();
  }

  // offer, answer, ice from another peer. An offer may come from a peer we have not heard
  // of yet only if its new-peer was lost; answer and ice for an unknown link are stale.
  receive(frame) {
    let link = this.links.get(frame.from);
    if (!link && frame.type === "offer") link = this.add(frame.from);
    link?.receive(frame.type, frame.data);
  }

  #changed(link) {
    this.dispatchEvent(new CustomEvent("change", { detail: link }));
  }
}
