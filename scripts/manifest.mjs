// Writes oclif.manifest.json from the compiled commands, so the CLI starts without scanning
// dist/commands (what `oclif manifest` does, without its heavy dev dependency).
import { Config } from '@oclif/core';
import { writeFileSync, renameSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const config = await Config.load({ root, ignoreManifest: true });
const plugin = config.getPluginsList().find((p) => p.root === root) ?? config.plugins.get(config.pjson.name);
const manifest = { commands: plugin.manifest.commands, version: config.version };
const tmp = path.join(root, '.oclif.manifest.json.tmp');
writeFileSync(tmp, JSON.stringify(manifest, null, 2) + '\n');
renameSync(tmp, path.join(root, 'oclif.manifest.json'));
