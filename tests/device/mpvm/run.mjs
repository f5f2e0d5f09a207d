// Run a MicroPython script with files preloaded into MicroPython's filesystem.
// usage: node run.mjs <script.py> <dest=src>...   (prints the script's output; exit 1 on error)
import { readFileSync } from "node:fs";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const [script, ...files] = process.argv.slice(2);
let out = "";
const mp = await loadMicroPython({
  heapsize: 1024 * 1024,
  stdout: (s) => { out += s + "\n"; },
  stderr: (s) => { out += s + "\n"; },
});
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
} catch (e) {
  out += "ERROR " + e.message + "\n";
  code = 1;
}
process.stdout.write(out);
process.exit(code);
