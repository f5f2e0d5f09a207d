// Copies the minified browser builds of uPlot (charts) and htmx (fragment swaps) into
// static/vendor/, with a VERSIONS file naming what was copied. Run: npm ci && npm run build
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";

const out = new URL("./static/vendor/", import.meta.url);
mkdirSync(out, { recursive: true });
const assets = [
  ["uplot", "dist/uPlot.iife.min.js", "uPlot.iife.min.js"],
  ["uplot", "dist/uPlot.min.css", "uPlot.min.css"],
  ["htmx.org", "dist/htmx.min.js", "htmx.min.js"],
];
const versions = [];
for (const [pkg, from, to] of assets) {
  const root = new URL(`./node_modules/${pkg}/`, import.meta.url);
  copyFileSync(new URL(from, root), new URL(to, out));
  const { version, license } = JSON.parse(readFileSync(new URL("package.json", root)));
  versions.push(`${to}: ${pkg} ${version} (${license})`);
}
writeFileSync(new URL("VERSIONS", out), versions.join("\n") + "\n");
console.log(versions.join("\n"));
