// Builds the dashboard into one directory: index.html plus content-hashed assets, and a manifest for build.rs.
// Usage: node build.mjs [OUT_DIR]   (default: dist/)
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { spawnSync } from "node:child_process";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] ?? join(here, "dist"));

// Type-check first: a type error fails the build like a Rust one would.
const tsc = spawnSync(process.execPath, [join(here, "node_modules/typescript/bin/tsc"), "--noEmit", "-p", here], {
  stdio: "inherit",
});
if (tsc.status !== 0) {
  console.error("dashboard: type check failed");
  process.exit(1);
}

rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, "assets"), { recursive: true });

const result = await esbuild.build({
  entryPoints: { app: join(here, "src/main.ts") },
  bundle: true,
  format: "esm",
  target: ["chrome110", "firefox110", "safari16"],
  minify: true,
  sourcemap: false,
  legalComments: "eof",
  write: false,
  outdir: join(out, "assets"),
  entryNames: "[name]-[hash]",
  metafile: true,
  logLevel: "warning",
});

const files = [];
let script = "";
let style = "";
for (const file of result.outputFiles) {
  writeFileSync(file.path, file.contents);
  const name = file.path.slice(join(out, "assets").length + 1);
  files.push(name);
  if (name.endsWith(".js")) script = name;
  if (name.endsWith(".css")) style = name;
}
if (!script || !style) {
  console.error("dashboard: the bundle has no script or no stylesheet");
  process.exit(1);
}

// Static files are copied under a content hash too, so every asset can be cached forever.
function hashed(source, stem, ext) {
  const bytes = readFileSync(join(here, source));
  const hash = createHash("sha256").update(bytes).digest("hex").slice(0, 10);
  const name = `${stem}-${hash}.${ext}`;
  writeFileSync(join(out, "assets", name), bytes);
  files.push(name);
  return name;
}
const icon = hashed("public/favicon.svg", "favicon", "svg");

const html = readFileSync(join(here, "index.html"), "utf8")
  .replaceAll("%SCRIPT%", `/assets/${script}`)
  .replaceAll("%STYLE%", `/assets/${style}`)
  .replaceAll("%ICON%", `/assets/${icon}`);
if (html.includes("%")) {
  const left = html.match(/%[A-Z]+%/);
  if (left) {
    console.error(`dashboard: unreplaced placeholder ${left[0]} in index.html`);
    process.exit(1);
  }
}
writeFileSync(join(out, "index.html"), html);
writeFileSync(join(out, "manifest.json"), JSON.stringify({ index: "index.html", assets: files.sort() }, null, 1));
console.log(`dashboard: built ${files.length + 1} files into ${out}`);
