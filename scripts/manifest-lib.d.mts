export interface OclifManifest {
  commands: Record<string, { id: string; flags: Record<string, { name: string; description?: string }> } & Record<string, unknown>>;
  version: string;
}
export function buildManifest(root: string): Promise<OclifManifest>;
