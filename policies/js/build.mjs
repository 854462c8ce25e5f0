// Builds a JavaScript policy into a component:
//   node build.mjs <policy dir> <out.wasm>
// The policy dir holds app.js, which exports `init` and `route`.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile, mkdir } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const [dir, out] = process.argv.slice(2);
if (!dir || !out) {
  console.error('usage: node build.mjs <policy dir> <out.wasm>');
  process.exit(2);
}
const here = dirname(fileURLToPath(import.meta.url));
const { component } = await componentize({
  sourcePath: resolve(dir, 'app.js'),
  witPath: resolve(here, '../../wit'),
  worldName: 'policy',
  // Without these the component imports wasi:http and does not link against plain WASI.
  disableFeatures: ['http', 'fetch-event'],
});
await mkdir(dirname(resolve(out)), { recursive: true });
await writeFile(out, component);
console.log(`built ${out} (${component.length} bytes)`);
