// The oclif manifest as the compiled commands define it now. oclif's own loader prefers an existing
// oclif.manifest.json over the commands, so a manifest built through it goes stale as soon as one
// exists; loading the plugin with ignoreManifest reads every command class instead.
import { Plugin } from '@oclif/core';

/** Manifest object (what oclif.manifest.json holds) built from dist/commands of the package at root. */
export async function buildManifest(root) {
  const plugin = new Plugin({ root, type: 'core', isRoot: true, ignoreManifest: true, errorOnManifestCreate: true, respectNoCacheDefault: true });
  await plugin.load();
  return { commands: plugin.manifest.commands, version: plugin.manifest.version };
}
