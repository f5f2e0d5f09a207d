// Exact RAM of each device module once imported, on MicroPython's own heap: this build
// collects garbage only between top-level calls, so measuring between calls sees the live
// heap. usage: node weigh.mjs <dir with the .mpy files>   (prints one JSON line)
import { readFileSync } from "node:fs";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const dir = process.argv[2];
const mp = await loadMicroPython({ heapsize: 1024 * 1024, stdout: () => {} });
const mods = ["planty_cmds", "planty_device", "planty_boot", "planty_ota"];
for (const m of mods) mp.FS.writeFile("/" + m + ".mpy", readFileSync(dir + "/" + m + ".mpy"));
mp.FS.mkdir("/umqtt");
mp.FS.writeFile("/umqtt/simple.py", readFileSync(new URL("fake_umqtt.py", import.meta.url)));
const live = () => {
  mp.runPython("import gc; gc.collect()");
  mp.runPython("__a = gc.mem_alloc()");
  return mp.globals.get("__a");
};
const out = {};
for (const code of ["import binascii, hashlib, struct, json, os", ...mods.map((m) => "import " + m)]) {
  const before = live();
  mp.runPython(code);
  out[code.replace("import ", "")] = live() - before;
}
console.log(JSON.stringify(out));
