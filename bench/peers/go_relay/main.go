// Command go_relay is the benchmark's Go comparison peer: a minimal signaling relay node
// on gorilla/websocket and redigo that speaks this project's wire protocol (docs/protocol.md)
// so that bench/gen.py drives it unchanged. It does what our node does per message, no
// more: membership in a Redis set per room, one pub/sub channel per room, to which a node
// is subscribed while it holds a member of the room.
//
// Envelope on a room channel: one mode byte, an id, '\n', then the frame as sent to clients.
// Mode 't': deliver to the member id only; 'x': to every member but id; 'a': to every member.
// The frame is encoded once, at the sending node; receiving nodes only route the bytes.
package main

import (
	"bytes"
	"encoding/json"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/gorilla/websocket"
)

const (
	prefix    = "bench:go:"
	sendQueue = 256 // frames waiting for a slow client before it is closed
)

var pong = []byte(`{"type":"pong"}`)

// frame is what a client receives; inbound is what it sends.
type frame struct {
	Type string          `json:"type"`
	Room string          `json:"room,omitempty"`
	From string          `json:"from"`
	To   string          `json:"to,omitempty"`
	Data json.RawMessage `json:"data"`
}

type inbound struct {
	Type string          `json:"type"`
	To   string          `json:"to"`
	Data json.RawMessage `json:"data"`
}

type welcome struct {
	Peer  string   `json:"peer"`
	Peers []string `json:"peers"`
	Node  string   `json:"node"`
}

type conn struct {
	ws       *websocket.Conn
	room     string
	peer     string
	send     chan []byte
	done     chan struct{}
	killOnce sync.Once
}

// kill closes the socket (the reader then returns and cleans up) and stops the writer.
func (c *conn) kill() {
	c.killOnce.Do(func() { close(c.done); c.ws.Close() })
}

// enqueue never blocks: a client that lets sendQueue frames pile up is closed.
func (c *conn) enqueue(b []byte) {
	select {
	case c.send <- b:
	default:
		c.kill()
	}
}

func (c *conn) writeLoop() {
	for {
		select {
		case b := <-c.send:
			if err := c.ws.WriteMessage(websocket.TextMessage, b); err != nil {
				c.kill()
				return
			}
		case <-c.done:
			return
		}
	}
}

type room struct {
	peers     map[string]*conn
	pending   int           // joins waiting for the subscription or for Redis
	ready     chan struct{} // closed once SUBSCRIBE is confirmed
	confirmed bool
}

type node struct {
	id   string
	pool *redis.Pool
	psc  redis.PubSubConn // writes under mu; read only by receive()
	mu   sync.RWMutex
	rms  map[string]*room
}

func marshal(f frame) []byte {
	b, err := json.Marshal(f)
	if err != nil { // only if data is not JSON, which the decoder already checked
		log.Printf("marshal: %v", err)
	}
	return b
}

func envelope(mode byte, id string, fr []byte) []byte {
	b := make([]byte, 0, len(id)+len(fr)+2)
	b = append(append(append(b, mode), id...), '\n')
	return append(b, fr...)
}

func (n *node) publish(rm string, env []byte) error {
	rc := n.pool.Get()
	defer rc.Close()
	_, err := rc.Do("PUBLISH", prefix+"ch:"+rm, env)
	return err
}

// receive routes every pub/sub message to the local members it names.
func (n *node) receive() {
	for {
		switch m := n.psc.Receive().(type) {
		case redis.Message:
			i := bytes.IndexByte(m.Data, '\n')
			if i < 1 {
				continue
			}
			mode, id, fr := m.Data[0], string(m.Data[1:i]), m.Data[i+1:]
			n.mu.RLock()
			if r := n.rms[strings.TrimPrefix(m.Channel, prefix+"ch:")]; r != nil {
				if mode == 't' {
					if c := r.peers[id]; c != nil {
						c.enqueue(fr)
					}
				} else {
					for p, c := range r.peers {
						if mode == 'a' || p != id {
							c.enqueue(fr)
						}
					}
				}
			}
			n.mu.RUnlock()
		case redis.Subscription:
			if m.Kind == "subscribe" {
				n.mu.Lock()
				if r := n.rms[strings.TrimPrefix(m.Channel, prefix+"ch:")]; r != nil && !r.confirmed {
					r.confirmed = true
					close(r.ready)
				}
				n.mu.Unlock()
			}
		case error:
			log.Fatalf("redis pub/sub: %v", m)
		}
	}
}

// release drops a join or a member; the last one out unsubscribes. Subscribe and
// unsubscribe are sent under mu, so Redis sees them in the order the room map changed.
func (n *node) release(c *conn, pending bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	r := n.rms[c.room]
	if r == nil {
		return
	}
	if pending {
		r.pending--
	} else if r.peers[c.peer] == c {
		delete(r.peers, c.peer)
	}
	if len(r.peers) == 0 && r.pending == 0 {
		delete(n.rms, c.room)
		if err := n.psc.Unsubscribe(prefix + "ch:" + c.room); err != nil {
			log.Printf("unsubscribe: %v", err)
		}
	}
}

// join subscribes (first local member), adds the peer to the room's set, welcomes it,
// then announces it to the others.
func (n *node) join(c *conn) bool {
	n.mu.Lock()
	r := n.rms[c.room]
	if r == nil {
		r = &room{peers: map[string]*conn{}, ready: make(chan struct{})}
		n.rms[c.room] = r
		if err := n.psc.Subscribe(prefix + "ch:" + c.room); err != nil {
			log.Printf("subscribe: %v", err)
		}
	}
	r.pending++
	n.mu.Unlock()
	select {
	case <-r.ready:
	case <-time.After(5 * time.Second):
		log.Printf("join %s/%s: subscription not confirmed", c.room, c.peer)
		n.release(c, true)
		return false
	}
	rc := n.pool.Get()
	rc.Send("MULTI")
	rc.Send("SADD", prefix+"room:"+c.room, c.peer)
	rc.Send("SMEMBERS", prefix+"room:"+c.room)
	replies, err := redis.Values(rc.Do("EXEC"))
	rc.Close()
	var members []string
	if err == nil {
		members, err = redis.Strings(replies[1], nil)
	}
	if err != nil {
		log.Printf("join %s/%s: %v", c.room, c.peer, err)
		n.release(c, true)
		return false
	}
	others := make([]string, 0, len(members))
	for _, m := range members {
		if m != c.peer {
			others = append(others, m)
		}
	}
	data, _ := json.Marshal(welcome{c.peer, others, n.id})
	c.send <- marshal(frame{"welcome", c.room, "server", c.peer, data}) // first frame: queue is empty
	n.mu.Lock()
	r.pending--
	r.peers[c.peer] = c
	n.mu.Unlock()
	peer, _ := json.Marshal(c.peer)
	if err := n.publish(c.room, envelope('x', c.peer, marshal(frame{"new-peer", c.room, "server", "", peer}))); err != nil {
		log.Printf("new-peer %s/%s: %v", c.room, c.peer, err)
	}
	return true
}

func (n *node) leave(c *conn) {
	c.kill()
	n.release(c, false)
	peer, _ := json.Marshal(c.peer)
	env := envelope('x', c.peer, marshal(frame{"peer-left", c.room, "server", "", peer}))
	rc := n.pool.Get()
	defer rc.Close()
	rc.Send("SREM", prefix+"room:"+c.room, c.peer)
	rc.Send("PUBLISH", prefix+"ch:"+c.room, env)
	if _, err := rc.Do(""); err != nil {
		log.Printf("leave %s/%s: %v", c.room, c.peer, err)
	}
}

func errorFrame(code, msg string) []byte {
	data, _ := json.Marshal(map[string]string{"code": code, "message": msg})
	return marshal(frame{Type: "error", From: "server", Data: data})
}

func (n *node) readLoop(c *conn) {
	for {
		kind, b, err := c.ws.ReadMessage()
		if err != nil {
			return
		}
		var in inbound
		if kind != websocket.TextMessage {
			c.enqueue(errorFrame("bad-message", "frames are JSON text"))
			continue
		}
		if err := json.Unmarshal(b, &in); err != nil {
			c.enqueue(errorFrame("bad-message", "not a JSON object: "+err.Error()))
			continue
		}
		var env []byte
		switch in.Type {
		case "offer", "answer", "ice":
			if in.To == "" {
				c.enqueue(errorFrame("bad-message", "a relay needs 'to'"))
				continue
			}
			env = envelope('t', in.To, marshal(frame{in.Type, c.room, c.peer, in.To, in.Data}))
		case "chat":
			env = envelope('a', "", marshal(frame{"chat", c.room, c.peer, "", in.Data}))
		case "ping":
			c.enqueue(pong)
			continue
		default:
			c.enqueue(errorFrame("bad-message", "unknown type "+strconv.Quote(in.Type)))
			continue
		}
		if err := n.publish(c.room, env); err != nil {
			log.Printf("publish %s/%s: %v", c.room, c.peer, err)
			c.enqueue(errorFrame("unavailable", "redis is unavailable"))
		}
	}
}

// validID: ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$, as our node (and so ids never hold '\n').
func validID(s string) bool {
	if len(s) == 0 || len(s) > 64 || s == "server" {
		return false
	}
	for i := 0; i < len(s); i++ {
		ch := s[i]
		alnum := ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9'
		if !alnum && (i == 0 || ch != '.' && ch != '_' && ch != '-') {
			return false
		}
	}
	return true
}

var upgrader = websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}

func (n *node) serveWS(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/ws/"), "/")
	if len(parts) != 2 || !validID(parts[0]) || !validID(parts[1]) {
		http.Error(w, `{"error":{"code":"bad-path","message":"GET /ws/{room}/{peer}"}}`, http.StatusBadRequest)
		return
	}
	ws, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has answered the client
	}
	ws.SetReadLimit(1 << 20)
	c := &conn{ws: ws, room: parts[0], peer: parts[1],
		send: make(chan []byte, sendQueue), done: make(chan struct{})}
	go c.writeLoop()
	if !n.join(c) {
		ws.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(websocket.CloseInternalServerErr, "join failed"),
			time.Now().Add(time.Second))
		c.kill()
		return
	}
	n.readLoop(c)
	n.leave(c)
}

func main() {
	log.SetFlags(log.LstdFlags)
	port := os.Getenv("PORT")
	if port == "" {
		log.Fatal("PORT is required")
	}
	host, url, id := os.Getenv("HOST"), os.Getenv("REDIS_URL"), os.Getenv("NODE_ID")
	if host == "" {
		host = "127.0.0.1"
	}
	if url == "" {
		log.Fatal("REDIS_URL is required")
	}
	if id == "" {
		id = "go"
	}
	pool := &redis.Pool{MaxIdle: 64, MaxActive: 64, Wait: true, IdleTimeout: 4 * time.Minute,
		Dial: func() (redis.Conn, error) { return redis.DialURL(url) }}
	sub, err := redis.DialURL(url)
	if err != nil {
		log.Fatalf("redis: %v", err)
	}
	n := &node{id: id, pool: pool, psc: redis.PubSubConn{Conn: sub}, rms: map[string]*room{}}
	go n.receive()

	mux := http.NewServeMux()
	ok := func(status string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Write([]byte(`{"status":"` + status + `"}`))
		}
	}
	mux.HandleFunc("/ready", ok("ready"))
	mux.HandleFunc("/health", ok("ok"))
	mux.HandleFunc("/ws/", n.serveWS)
	ln, err := net.Listen("tcp", net.JoinHostPort(host, port))
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != http.ErrServerClosed {
			log.Fatalf("serve: %v", err)
		}
	}()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	srv.Close()
}
