// The doctor's I/O: looks at the host and tries things in a throw-away network namespace. No probe throws.
import { existsSync } from 'node:fs'
import { readdir, readFile, stat, statfs } from 'node:fs/promises'
import { homedir } from 'node:os'
import { dirname, join } from 'node:path'
import { processAlive } from '../common/process.ts'
import { detectCgroupLayout, parseProcCgroups } from './cgroup.ts'
import { findExecutable, firstErrorLine, runCommand } from './exec.ts'
import { detectHostFlavour } from './host.ts'
import type { CgroupInfo, HostFlavour, Probe, SkipReason } from './types.ts'
import type { DiskFacts, Tool, TunState } from './verdicts.ts'

const NETNS_DIR = '/run/netns'
const NAMESPACE_PREFIX = 'km1s-doctor-'

async function readText(path: string): Promise<string | null> {
  try {
    return await readFile(path, 'utf8')
  } catch {
    return null
  }
}

/** Finds the first of `names` that exists and asks it for its version; null when none is installed. */
export async function findTool(
  names: readonly string[],
  versionArgs: readonly string[],
  pattern: RegExp,
): Promise<Tool | null> {
  for (const name of names) {
    const path = await findExecutable(name)
    if (path === null) continue
    const result = await runCommand(path, versionArgs)
    const version = pattern.exec(`${result.stdout}\n${result.stderr}`)?.[1] ?? null
    return { path, version }
  }
  return null
}

export function doctorNamespaceName(pid: number): string {
  return `${NAMESPACE_PREFIX}${pid}`
}

/**
 * Namespaces left by a doctor that was killed mid-run: their pid is gone (or is ours, since runs in one
 * process are serialized). Removing them keeps `ip netns list` clean after a Ctrl-C.
 */
export function staleDoctorNamespaces(
  names: readonly string[],
  ownPid: number,
  isAlive: (pid: number) => boolean,
): string[] {
  return names.filter((name) => {
    const match = /^km1s-doctor-(\d+)$/.exec(name)
    if (match === null) return false
    const pid = Number(match[1])
    return pid === ownPid || !isAlive(pid)
  })
}

export interface NetworkProbes {
  netns: Probe
  veth: Probe
  bridge: Probe
  nftables: Probe
  wireguardKernel: Probe
}

function allSkipped(reason: SkipReason): NetworkProbes {
  const probe: Probe = { status: 'skipped', reason }
  return { netns: probe, veth: probe, bridge: probe, nftables: probe, wireguardKernel: probe }
}

const failed = (error: string): Probe => ({ status: 'failed', error })

// Exercises what network/ will ask of nftables: a concatenated vmap, numgen DNAT, ct status and masquerade.
// Numeric priorities because nft 1.0.6 rejects `dstnat` on some hooks (PLATFORM.md).
const NFT_TEST_RULESET = `table inet km1sdoctor {
  chain svc {
    dnat ip to numgen inc mod 2 map { 0 : 10.42.0.2, 1 : 10.42.0.3 }
  }
  chain prerouting {
    type nat hook prerouting priority -100; policy accept;
    ip daddr . meta l4proto . th dport vmap { 10.43.0.1 . tcp . 80 : jump svc }
  }
  chain postrouting {
    type nat hook postrouting priority 100; policy accept;
    ct status dnat ip saddr 10.42.0.0/24 ip daddr 10.42.0.0/24 masquerade
    ip saddr 10.42.0.0/16 masquerade
  }
}
`

async function probeLink(ip: string, ns: string, args: readonly string[], okInfo: string): Promise<Probe> {
  // `name` always spelled out: `ip link add a ...` would read `a` as `address` (PLATFORM.md).
  const result = await runCommand(ip, ['-n', ns, 'link', 'add', 'name', ...args])
  return result.code === 0 ? { status: 'ok', info: okInfo } : failed(firstErrorLine(result))
}

async function probeNftables(ip: string, ns: string, nft: string): Promise<Probe> {
  const list = await runCommand(ip, ['netns', 'exec', ns, nft, 'list', 'tables'])
  if (list.code !== 0) return failed(`nft list tables: ${firstErrorLine(list)}`)
  const apply = await runCommand(ip, ['netns', 'exec', ns, nft, '-f', '-'], { input: NFT_TEST_RULESET })
  if (apply.code !== 0) return failed(`a NAT ruleset like km1s's was rejected: ${firstErrorLine(apply)}`)
  return {
    status: 'ok',
    info: 'nft list tables and a NAT/numgen/vmap ruleset work (in a temporary namespace)',
  }
}

/**
 * Creates `km1s-doctor-<pid>`, tries veth, bridge, nftables and kernel WireGuard inside it, and deletes it
 * whatever happens: nothing is ever made in the root namespace.
 */
export async function probeNetwork(
  ip: string | null,
  nft: string | null,
  isRoot: boolean,
): Promise<NetworkProbes> {
  if (!isRoot) return allSkipped('needs root')
  if (ip === null) return allSkipped('no ip')
  const existing = await readdir(NETNS_DIR).catch(() => [] as string[])
  for (const stale of staleDoctorNamespaces(existing, process.pid, processAlive)) {
    await runCommand(ip, ['netns', 'del', stale])
  }
  const ns = doctorNamespaceName(process.pid)
  const probes = allSkipped('no namespace')
  let created = false
  try {
    const add = await runCommand(ip, ['netns', 'add', ns])
    created = add.code === 0
    if (!created) probes.netns = failed(firstErrorLine(add))
    else {
      probes.veth = await probeLink(
        ip,
        ns,
        ['km1sdoc0', 'type', 'veth', 'peer', 'name', 'km1sdoc1'],
        'created a veth pair',
      )
      probes.bridge = await probeLink(ip, ns, ['km1sdocbr', 'type', 'bridge'], 'created a bridge')
      probes.nftables = nft === null ? failed('nft not found') : await probeNftables(ip, ns, nft)
      probes.wireguardKernel = await probeLink(
        ip,
        ns,
        ['km1swgtest', 'type', 'wireguard'],
        'kernel WireGuard',
      )
    }
  } finally {
    // Also after a failed add: it can leave /run/netns/<ns> behind.
    const del = await runCommand(ip, ['netns', 'del', ns])
    if (created) {
      probes.netns =
        del.code === 0 && !existsSync(join(NETNS_DIR, ns))
          ? { status: 'ok', info: `created and deleted namespace ${ns} (ip netns add/del)` }
          : failed(`created ${ns} but could not delete it (${firstErrorLine(del)}): ip netns del ${ns}`)
    }
  }
  return probes
}

export interface CgroupFacts {
  info: CgroupInfo | null
  kernelControllers: Map<string, boolean>
  kernelCmdline: string
}

export async function probeCgroups(): Promise<CgroupFacts> {
  const [mounts, procCgroups, cmdline] = await Promise.all([
    readText('/proc/mounts'),
    readText('/proc/cgroups'),
    readText('/proc/cmdline'),
  ])
  const kernelControllers = parseProcCgroups(procCgroups ?? '')
  const kernelCmdline = cmdline ?? ''
  if (mounts === null) return { info: null, kernelControllers, kernelCmdline }
  const layout = detectCgroupLayout(mounts)
  if (layout.v2Mount === null) return { info: layout, kernelControllers, kernelCmdline }
  const controllers = (await readText(join(layout.v2Mount, 'cgroup.controllers'))) ?? ''
  return { info: detectCgroupLayout(mounts, controllers), kernelControllers, kernelCmdline }
}

export async function probeHostFlavour(): Promise<HostFlavour> {
  const [osRelease, model] = await Promise.all([
    readText('/etc/os-release'),
    readText('/proc/device-tree/model'),
  ])
  return detectHostFlavour({
    osRelease: osRelease ?? '',
    deviceTreeModel: (model ?? '').replaceAll('\0', ''),
    firmwareCmdlineExists: existsSync('/boot/firmware/cmdline.txt'),
    arch: process.arch,
  })
}

export async function probeTun(): Promise<TunState> {
  try {
    return (await stat('/dev/net/tun')).isCharacterDevice() ? 'char' : 'not-char'
  } catch {
    return 'missing'
  }
}

/** The data directory as DESIGN.md's command-line contract defines its default. */
export function defaultDataDir(isRoot: boolean): string {
  return isRoot ? '/var/lib/km1s' : join(homedir(), '.local', 'share', 'km1s')
}

/** Free space for the data directory, measured at its nearest existing ancestor if it is not made yet. */
export async function probeDisk(dataDir: string): Promise<DiskFacts> {
  let at = dataDir
  for (;;) {
    try {
      const fs = await statfs(at)
      return { dataDir, measuredAt: at, freeBytes: Number(fs.bavail) * Number(fs.bsize) }
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if ((code !== 'ENOENT' && code !== 'ENOTDIR') || dirname(at) === at)
        return { dataDir, error: String(code ?? err) }
      at = dirname(at)
    }
  }
}
