// Run a MicroPython script with files preloaded into MicroPython's filesystem.
// usage: node run.mjs <script.py> <dest=src>...   (prints the script's output; exit 1 on error)
// The script gets blocking TCP/TLS sockets through `js.plantyNet` (net.mjs; lib/socket.py).
import { readFileSync } from "node:fs";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import { installNet } from "./net.mjs";

const [script, ...files] = process.argv.slice(2);
const live = process.env.MPVM_LIVE === "1"; // print as it comes (long runs), not at the end
let out = "";
const emit = (s) => { if (live) process.stdout.write(s + "\n"); else out += s + "\n"; };
const mp = await loadMicroPython({
  heapsize: 1024 * 1024, // the first heap: this build adds more on demand
  stdout: emit,
  stderr: emit,
});
const worker = installNet();
for (const spec of files) {
  const [dest, src] = spec.split("=");
  const parts = dest.split("/").filter(Boolean);
  let dir = "";
  for (const p of parts.slice(0, -1)) {
    dir += "/" + p;
    try { mp.FS.mkdir(dir); } catch (e) { /* exists */ }
  }
  mp.FS.writeFile(dest, readFileSync(src));
}
let code = 0;
try {
  mp.runPython(readFileSync(script, "utf8"));
  // A script that defines tick() is driven from here, one top-level call at a time: this
  // build collects garbage only between top-level calls, never inside a long one.
  if (mp.globals.get("tick") !== undefined) {
    do { mp.runPython("__done = tick()"); } while (!mp.globals.get("__done"));
  }
} catch (e) {
  emit("ERROR " + e.message);
  code = 1;
}
process.stdout.write(out);
await worker.terminate();
process.exit(code);
