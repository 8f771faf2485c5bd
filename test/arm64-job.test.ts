import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { nativeAvailable } from '../src/kernels/native.js';

// The arm64 job itself (scripts/test-arm64.mjs: cross-build, qemu) runs from .ci/run; here, on the
// host: its tests pass against this machine's addon (so a failure under emulation is the NEON
// code's, not the tests'), and both scripts skip with one line, or fail when required, where they
// cannot run.

const root = path.resolve(__dirname, '..');
const required = process.env.SAE_REQUIRE_NATIVE === '1';

function node(script: string, args: string[], env: Record<string, string | undefined>) {
  const e: Record<string, string | undefined> = { ...process.env };
  delete e.SAE_REQUIRE_NATIVE;
  delete e.SAE_REQUIRE_ARM64;
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete e[k]; else e[k] = v;
  return spawnSync(process.execPath, [path.join(root, 'scripts', script), ...args], { cwd: root, encoding: 'utf8', env: e as NodeJS.ProcessEnv });
}

describe('the arm64 job (scripts/test-arm64.mjs)', () => {
  it.skipIf(!nativeAvailable() && !required)('its emulated tests pass on the host, against this machine\'s addon', () => {
    const r = node('test-arm64.mjs', ['--host'], {});
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/arm64: host: (\d+) tests, \1 pass, 0 fail/);
    expect(r.stderr).toMatch(/threads 1, 2, 3: identical results/);
  });

  it('prints one line and exits 0 where its tools are missing; exits 1 with SAE_REQUIRE_ARM64=1', () => {
    const r = node('test-arm64.mjs', [], { SAE_ARM64_QEMU: '/nonexistent/qemu-aarch64-static' });
    expect(r.status).toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    // (on another host than Linux x86-64 the job skips for that reason first)
    expect(r.stderr).toMatch(/^arm64: emulated arm64 tests skipped \((missing qemu-aarch64-static|they run on a Linux x86-64 host)/);
    const s = node('test-arm64.mjs', [], { SAE_ARM64_QEMU: '/nonexistent/qemu-aarch64-static', SAE_REQUIRE_ARM64: '1' });
    expect(s.status).toBe(1);
    expect(s.stderr).toMatch(/SAE_REQUIRE_ARM64=1, failing/);
  });
});

describe('scripts/build-native.mjs on targets it cannot build', () => {
  // a macOS target that is never this host's
  const mac = process.platform === 'darwin' && process.arch === 'arm64' ? 'darwin-x64' : 'darwin-arm64';
  for (const [target, env, why] of [
    ['win32-x64', {}, /Windows: not built/],
    ['freebsd-x64', {}, /no native build for freebsd-x64/],
    [mac, {}, new RegExp(`cross-building ${mac} on .* is not supported`)],
    ['linux-arm64', { CXX: '/nonexistent/aarch64-linux-gnu-g++' }, /no C\+\+ compiler|cross-building linux-arm64 on .* is not supported/],
  ] as Array<[string, Record<string, string>, RegExp]>) {
    it(`${target}: one line and exit 0, or exit 1 with SAE_REQUIRE_NATIVE=1`, () => {
      const r = node('build-native.mjs', [], { SAE_NATIVE_TARGET: target, SAE_FORCE_NATIVE: '1', ...env });
      expect(r.status).toBe(0);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(why);
      expect(r.stderr).toMatch(/using the reference kernels$/m);
      const s = node('build-native.mjs', [], { SAE_NATIVE_TARGET: target, SAE_FORCE_NATIVE: '1', SAE_REQUIRE_NATIVE: '1', ...env });
      expect(s.status).toBe(1);
      expect(s.stderr).toMatch(/SAE_REQUIRE_NATIVE=1, failing/);
    });
  }
});
