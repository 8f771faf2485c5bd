// Writes oclif.manifest.json from the compiled commands (what `oclif manifest` does, without its
// heavy dev dependency). Always regenerated: never kept from a previous build.
import { writeFileSync, renameSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { buildManifest } from './manifest-lib.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const manifest = await buildManifest(root);
const tmp = path.join(root, '.oclif.manifest.json.tmp');
writeFileSync(tmp, JSON.stringify(manifest, null, 2) + '\n');
renameSync(tmp, path.join(root, 'oclif.manifest.json'));
