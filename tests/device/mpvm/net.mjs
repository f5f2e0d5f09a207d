// Blocking TCP/TLS sockets for MicroPython in the VM: a worker thread owns the sockets,
// the VM's thread waits on a SharedArrayBuffer (Atomics.wait), so MicroPython code sees
// the blocking stream semantics of the board (read(n) returns n bytes, or None when
// non-blocking and nothing is there). Requests and answers are JSON, bytes in base64.
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import net from "node:net";
import { existsSync } from "node:fs";
import tls from "node:tls";

const SIZE = 4 * 1024 * 1024;

if (isMainThread) {
  // nothing: installNet() below is used by run.mjs
} else {
  const { ctl, data } = workerData;
  const conns = new Map();
  let nextId = 1;
  const enc = new TextEncoder();
  const reply = (obj) => {
    const bytes = enc.encode(JSON.stringify(obj));
    data.set(bytes.subarray(0, SIZE));
    Atomics.store(ctl, 1, Math.min(bytes.length, SIZE));
    Atomics.store(ctl, 0, 1);
    Atomics.notify(ctl, 0);
  };
  const attach = (c, s) => {
    c.sock = s;
    s.on("data", (b) => { c.buf = Buffer.concat([c.buf, b]); c.poke(); });
    s.on("end", () => { c.eof = true; c.poke(); });
    s.on("close", () => { c.eof = true; c.poke(); });
    s.on("error", (e) => { c.err = e.code || e.message; c.poke(); });
  };
  const serve = (req) => {
    const c = conns.get(req.id);
    if (req.op === "connect") {
      const id = nextId++;
      const s = net.connect({ host: req.host, port: req.port }); // Nagle on, as lwIP on a board
      const conn = { buf: Buffer.alloc(0), eof: false, err: null, poke: () => {} };
      conns.set(id, conn);
      s.once("connect", () => { attach(conn, s); reply({ id }); });
      s.once("error", (e) => { if (!conn.sock) { conns.delete(id); reply({ err: e.code || e.message }); } });
    } else if (req.op === "tls") {
      const raw = c.sock;
      raw.removeAllListeners("data"); raw.removeAllListeners("end");
      raw.removeAllListeners("close"); raw.removeAllListeners("error");
      const opts = { socket: raw, servername: req.servername, minVersion: "TLSv1.2" };
      if (req.ca) opts.ca = req.ca;
      if (!req.verify) opts.rejectUnauthorized = false;
      const s = tls.connect(opts);
      let done = false;
      s.once("secureConnect", () => { done = true; attach(c, s); reply({ ok: true }); });
      s.once("error", (e) => { if (!done) { done = true; reply({ err: e.code || e.message }); } });
    } else if (req.op === "write") {
      if (!c || c.err || c.eof) { reply({ err: c ? (c.err || "EPIPE") : "EBADF" }); return; }
      c.sock.write(Buffer.from(req.b64, "base64"), () => reply({ n: req.len }));
    } else if (req.op === "read") {
      if (!c) { reply({ err: "EBADF" }); return; }
      const take = () => {
        const n = Math.min(req.n, c.buf.length);
        const out = c.buf.subarray(0, n);
        c.buf = c.buf.subarray(n);
        return out.toString("base64");
      };
      if (c.buf.length >= req.n || (c.buf.length > 0 && !req.block) || (c.buf.length > 0 && c.eof)) {
        reply({ b64: take() }); return;
      }
      if (c.err) { reply({ err: c.err }); return; }
      if (c.eof) { reply({ b64: "" }); return; }
      if (!req.block) { reply({ none: true }); return; }
      let timer = null;
      c.poke = () => {
        if (c.buf.length >= req.n || c.eof || c.err) {
          c.poke = () => {};
          if (timer) clearTimeout(timer);
          if (c.buf.length > 0) reply({ b64: take() });
          else if (c.err) reply({ err: c.err });
          else reply({ b64: "" });
        }
      };
      if (req.timeout_ms > 0) {
        timer = setTimeout(() => {
          c.poke = () => {};
          if (c.buf.length > 0) reply({ b64: take() }); else reply({ err: "ETIMEDOUT" });
        }, req.timeout_ms);
      }
    } else if (req.op === "close") {
      if (c) { c.sock && c.sock.destroy(); conns.delete(req.id); }
      reply({ ok: true });
    } else if (req.op === "exists") {
      reply({ yes: existsSync(req.path) });
    } else if (req.op === "sleep") {
      setTimeout(() => reply({ ok: true }), req.ms);
    } else {
      reply({ err: "unknown op " + req.op });
    }
  };
  parentPort.on("message", serve);
}

export function installNet() {
  const ctl = new Int32Array(new SharedArrayBuffer(8));
  const data = new Uint8Array(new SharedArrayBuffer(SIZE));
  const worker = new Worker(new URL(import.meta.url), { workerData: { ctl, data } });
  worker.unref();
  const dec = new TextDecoder();
  globalThis.plantyNet = {
    call(reqJson) {
      Atomics.store(ctl, 0, 0);
      worker.postMessage(JSON.parse(reqJson));
      while (Atomics.wait(ctl, 0, 0, 60000) === "timed-out") {
        /* keep waiting: a read has its own timeout */
      }
      return dec.decode(data.slice(0, Atomics.load(ctl, 1)));
    },
  };
  return worker;
}
