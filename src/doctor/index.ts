// `km1s doctor`: what this host can and cannot do for km1s, and what to install or enable.
// Probes (probe.ts) gather facts and try things in a throw-away network namespace; verdicts.ts judges them.
import { resolve } from 'node:path'
import { ApiClient } from '../api/client.ts'
import { detectOciRuntime } from '../runtime/detect.ts'
import { overlayChecks } from './overlay.ts'
import {
  defaultDataDir,
  findTool,
  probeCgroups,
  probeDisk,
  probeHostFlavour,
  probeNetwork,
  probeTun,
} from './probe.ts'
import type { DoctorCheck, DoctorReport } from './types.ts'
import {
  checkCatatonit,
  checkCgroupControllers,
  checkCgroupLayout,
  checkDisk,
  checkIp,
  checkLink,
  checkNetns,
  checkNftables,
  checkNode,
  checkOciRuntime,
  checkRoot,
  checkTun,
  checkWireGuard,
} from './verdicts.ts'

export { detectCgroupLayout, parseMounts } from './cgroup.ts'
export { controllersFix, detectHostFlavour } from './host.ts'
export type { CgroupInfo, CgroupLayout, CheckLevel, DoctorCheck, DoctorReport, HostFlavour } from './types.ts'

export interface DoctorOptions {
  /** The km1s data directory whose filesystem must have room; defaults as `--data-dir` does. */
  dataDir?: string
  /** The agent's API socket: when an agent answers there, the doctor adds its overlay per peer. */
  socket?: string
}

// Runs in one process share the namespace name km1s-doctor-<pid>, so they take turns.
let previousRun: Promise<unknown> = Promise.resolve()

/** Runs every check; never throws, and leaves nothing behind on the host. */
export function runDoctor(opts: DoctorOptions = {}): Promise<DoctorReport> {
  const run = previousRun.then(() => diagnose(opts)).catch((err: unknown) => crashedReport(err))
  previousRun = run
  return run
}

async function diagnose(opts: DoctorOptions): Promise<DoctorReport> {
  const euid = process.geteuid?.()
  const isRoot = euid === 0
  const dataDir = resolve(opts.dataDir ?? defaultDataDir(isRoot))
  const [ip, nft, crun, runc, catatonit, wireguardGo, wg, cgroups, host, tun, disk, oci] = await Promise.all([
    findTool(['ip'], ['-V'], /iproute2-([\w.]+)/),
    findTool(['nft'], ['--version'], /nftables v(\S+)/),
    findTool(['crun'], ['--version'], /crun version (\S+)/),
    findTool(['runc'], ['--version'], /runc version (\S+)/),
    // Debian's package also installs it where podman looks; either path will do.
    findTool(['catatonit', '/usr/libexec/podman/catatonit'], ['--version'], /(\d+\.\d+\.\d+)/),
    // Only --version: `wireguard-go ANYTHING` else creates an interface named ANYTHING (PLATFORM.md).
    findTool(['wireguard-go'], ['--version'], /wireguard-go v?(\S+)/),
    findTool(['wg'], ['--version'], /wireguard-tools v?(\S+)/),
    probeCgroups(),
    probeHostFlavour(),
    probeTun(),
    probeDisk(dataDir),
    // Runs a throw-away container (~50 ms, once per process); as non-root it answers 'needs root' at once.
    detectOciRuntime(),
  ])
  const net = await probeNetwork(ip?.path ?? null, nft?.path ?? null, isRoot)
  const kernelWireGuard = net.wireguardKernel.status === 'ok'
  const checks: DoctorCheck[] = [
    checkRoot(euid),
    checkIp(ip),
    checkNetns(net.netns),
    checkLink('veth', net.veth),
    checkLink('bridge', net.bridge),
    checkTun(tun, kernelWireGuard),
    checkNftables(nft, net.nftables),
    checkWireGuard({ kernel: net.wireguardKernel, wireguardGo, wg, tunUsable: tun === 'char' }),
    checkCgroupLayout(cgroups.info),
    checkCgroupControllers(cgroups.info, host, cgroups),
    checkOciRuntime(crun, runc, cgroups.info, oci),
    checkCatatonit(catatonit),
    checkNode(process.versions.node),
    checkDisk(disk),
  ]
  if (opts.socket !== undefined) {
    const status = await new ApiClient(opts.socket, { timeoutMs: 3_000 }).status().catch(() => undefined)
    if (status !== undefined) checks.push(...overlayChecks(status.network, Date.now()))
  }
  return { checks, ok: checks.every((c) => c.level !== 'fail') }
}

// A bug in the doctor must still give the user an answer, not a stack trace.
function crashedReport(err: unknown): DoctorReport {
  const message = err instanceof Error ? err.message : String(err)
  const check: DoctorCheck = {
    id: 'doctor',
    name: 'doctor',
    level: 'fail',
    detail: `the doctor itself failed: ${message}`,
    fix: 'report this as a km1s bug, with the output of km1s doctor --debug',
  }
  return { checks: [check], ok: false }
}
