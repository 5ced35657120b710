import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { detectCgroupLayout } from '../../../src/doctor/cgroup.ts'
import { findExecutable, runCommand } from '../../../src/doctor/exec.ts'
import { staleDoctorNamespaces } from '../../../src/doctor/probe.ts'
import type { Probe } from '../../../src/doctor/types.ts'
import {
  checkCatatonit,
  checkDisk,
  checkLink,
  checkNetns,
  checkNftables,
  checkNode,
  checkOciRuntime,
  checkRoot,
  checkTun,
  checkWireGuard,
  DISK_FAIL_BYTES,
  DISK_WARN_BYTES,
} from '../../../src/doctor/verdicts.ts'

const ok = (info: string): Probe => ({ status: 'ok', info })
const failed = (error: string): Probe => ({ status: 'failed', error })
const needsRoot: Probe = { status: 'skipped', reason: 'needs root' }
const wgGo = { path: '/usr/bin/wireguard-go', version: '0.0.20220316' }
const wg = { path: '/usr/bin/wg', version: '1.0.20210914' }
const hybrid = detectCgroupLayout(
  'cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n',
  'hugetlb',
)
const v2 = detectCgroupLayout('cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n', 'cpu memory pids')

describe('verdicts', () => {
  it('warns with "needs root" instead of failing when not root', () => {
    assert.equal(checkRoot(1000).level, 'warn')
    assert.equal(checkRoot(0).level, 'ok')
    for (const c of [checkNetns(needsRoot), checkLink('veth', needsRoot), checkLink('bridge', needsRoot)]) {
      assert.equal(c.level, 'warn')
      assert.equal(c.detail, 'needs root')
      assert.match(c.fix ?? '', /sudo km1s doctor/)
    }
  })

  it('fails a link type the kernel refuses, with the module to load', () => {
    const c = checkLink('veth', failed('Error: Unknown device type.'))
    assert.equal(c.level, 'fail')
    assert.match(c.detail, /Unknown device type/)
    assert.match(c.fix ?? '', /modprobe veth/)
  })

  it('accepts kernel WireGuard or wireguard-go, and fails with the apt hint when neither works', () => {
    assert.equal(
      checkWireGuard({ kernel: ok('kernel'), wireguardGo: null, wg, tunUsable: false }).level,
      'ok',
    )
    const userspace = checkWireGuard({
      kernel: failed('Unknown device type'),
      wireguardGo: wgGo,
      wg,
      tunUsable: true,
    })
    assert.equal(userspace.level, 'ok')
    assert.match(userspace.detail, /wireguard-go/)
    const none = checkWireGuard({
      kernel: failed('Unknown device type'),
      wireguardGo: null,
      wg: null,
      tunUsable: true,
    })
    assert.equal(none.level, 'fail')
    assert.equal(none.fix, 'apt-get install -y --no-install-recommends wireguard-go wireguard-tools')
    const noTun = checkWireGuard({
      kernel: failed('Unknown device type'),
      wireguardGo: wgGo,
      wg,
      tunUsable: false,
    })
    assert.equal(noTun.level, 'fail')
    const noWg = checkWireGuard({ kernel: ok('kernel'), wireguardGo: null, wg: null, tunUsable: true })
    assert.equal(noWg.level, 'warn')
    assert.match(noWg.fix ?? '', /wireguard-tools/)
    const notRoot = checkWireGuard({ kernel: needsRoot, wireguardGo: null, wg: null, tunUsable: true })
    assert.equal(notRoot.level, 'warn')
    assert.match(notRoot.detail, /^needs root/)
  })

  it('lets tun be missing only when kernel WireGuard works', () => {
    assert.equal(checkTun('char', false).level, 'ok')
    assert.equal(checkTun('missing', true).level, 'warn')
    assert.equal(checkTun('missing', false).level, 'fail')
    assert.match(checkTun('not-char', false).fix ?? '', /mknod \/dev\/net\/tun c 10 200/)
  })

  it('warns that crun refuses a hybrid layout and km1s works around it', () => {
    const crun = { path: '/usr/bin/crun', version: '1.8.1' }
    const onHybrid = checkOciRuntime(crun, null, hybrid)
    assert.equal(onHybrid.level, 'warn')
    assert.match(onHybrid.detail, /hybrid/)
    assert.match(onHybrid.detail, /works around/)
    assert.equal(checkOciRuntime(crun, null, v2).level, 'ok')
    // Hybrid with an empty cgroup2 side is what crun accepts.
    const emptyV2 = detectCgroupLayout(
      'cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n',
      '',
    )
    assert.equal(checkOciRuntime(crun, null, emptyV2).level, 'ok')
    const runcOnly = checkOciRuntime(null, { path: '/usr/sbin/runc', version: '1.1.5' }, hybrid)
    assert.equal(runcOnly.level, 'warn')
    assert.match(runcOnly.fix ?? '', /install .* crun$/)
    assert.equal(checkOciRuntime(null, null, v2).level, 'fail')
  })

  it('fails missing binaries with the Debian package to install', () => {
    assert.equal(checkCatatonit(null).fix, 'apt-get install -y --no-install-recommends catatonit')
    assert.equal(checkNftables(null, needsRoot).fix, 'apt-get install -y --no-install-recommends nftables')
    const nft = { path: '/usr/sbin/nft', version: '1.0.6' }
    assert.equal(checkNftables(nft, needsRoot).level, 'warn')
    assert.equal(checkNftables(nft, failed('Error: Could not process rule')).level, 'fail')
  })

  it('wants Node 22 or newer', () => {
    assert.equal(checkNode('24.21.0').level, 'ok')
    assert.equal(checkNode('22.18.0').level, 'ok')
    const old = checkNode('v20.19.2')
    assert.equal(old.level, 'fail')
    assert.match(old.fix ?? '', /npm install/)
  })

  it('warns below 1 GiB and fails below 200 MiB of free disk', () => {
    const at = (freeBytes: number) =>
      checkDisk({ dataDir: '/var/lib/km1s', measuredAt: '/var/lib', freeBytes }).level
    assert.equal(at(DISK_WARN_BYTES), 'ok')
    assert.equal(at(DISK_WARN_BYTES - 1), 'warn')
    assert.equal(at(DISK_FAIL_BYTES), 'warn')
    assert.equal(at(DISK_FAIL_BYTES - 1), 'fail')
  })
})

describe('doctor plumbing', () => {
  it('finds namespaces left by dead doctors, never a live one', () => {
    const names = ['km1s-doctor-10', 'km1s-doctor-20', 'km1s-doctor-30', 'lan', 'km1s-doctor-x']
    const alive = (pid: number) => pid === 20
    assert.deepEqual(staleDoctorNamespaces(names, 30, alive), ['km1s-doctor-10', 'km1s-doctor-30'])
  })

  it('reports a missing command as a result, not an exception', async () => {
    const result = await runCommand('/nonexistent/km1s-no-such-tool', ['--version'])
    assert.equal(result.code, null)
    assert.equal(result.error, 'ENOENT')
    assert.equal(await findExecutable('km1s-no-such-tool'), null)
  })

  it('kills a command that outlives its timeout', async () => {
    const started = Date.now()
    const result = await runCommand('sleep', ['5'], { timeoutMs: 100 })
    assert.equal(result.code, null)
    assert.match(result.error ?? '', /timed out/)
    assert.ok(Date.now() - started < 2_000)
  })

  it('feeds input and returns output and exit status', async () => {
    const result = await runCommand('sh', ['-c', 'cat; exit 3'], { input: 'hello' })
    assert.equal(result.stdout, 'hello')
    assert.equal(result.code, 3)
  })
})
