// Pure: turns what the probes found into checks with a level, a one-line detail and, when not ok, a fix.

import type { OciRuntimeChoice } from '../runtime/detect.ts'
import { availableControllers, missingControllers, NEEDED_CONTROLLERS } from './cgroup.ts'
import { aptInstall, type ControllerFacts, controllersFix } from './host.ts'
import type { CgroupInfo, DoctorCheck, HostFlavour, Probe, SkipReason } from './types.ts'

/** A program found on this host, with the version it reported (null when it would not say). */
export interface Tool {
  path: string
  version: string | null
}

export const RUN_AS_ROOT = 'run it as root: sudo km1s doctor'
const GiB = 1024 ** 3
const MiB = 1024 ** 2
export const DISK_WARN_BYTES = 1 * GiB
export const DISK_FAIL_BYTES = 200 * MiB
export const MIN_NODE_MAJOR = 22

function check(
  id: string,
  name: string,
  level: DoctorCheck['level'],
  detail: string,
  fix?: string,
): DoctorCheck {
  return fix === undefined || level === 'ok' ? { id, name, level, detail } : { id, name, level, detail, fix }
}

function describe(tool: Tool): string {
  return tool.version === null ? tool.path : `${tool.version} (${tool.path})`
}

/** A probe that could not run is a warning: the doctor does not know, it did not see a failure. */
function skipped(id: string, name: string, reason: SkipReason): DoctorCheck {
  switch (reason) {
    case 'needs root':
      return check(id, name, 'warn', 'needs root', RUN_AS_ROOT)
    case 'no ip':
      return check(id, name, 'warn', 'not tested: ip (iproute2) is missing', aptInstall('iproute2'))
    case 'no namespace':
      return check(
        id,
        name,
        'warn',
        'not tested: no temporary network namespace',
        'fix the netns check first',
      )
  }
}

export function checkRoot(euid: number | undefined): DoctorCheck {
  if (euid === 0) return check('root', 'root', 'ok', 'running as root (euid 0)')
  const who = euid === undefined ? 'this platform has no user ids' : `running as euid ${euid}`
  return check(
    'root',
    'root',
    'warn',
    `${who}: the agent runs as root; the namespace, veth, bridge, nftables and WireGuard tests were skipped`,
    RUN_AS_ROOT,
  )
}

export function checkIp(ip: Tool | null): DoctorCheck {
  if (ip === null) return check('ip', 'ip (iproute2)', 'fail', 'ip not found', aptInstall('iproute2'))
  return check('ip', 'ip (iproute2)', 'ok', `iproute2 ${describe(ip)}`)
}

export function checkNetns(probe: Probe): DoctorCheck {
  const [id, name] = ['netns', 'network namespaces']
  if (probe.status === 'skipped') return skipped(id, name, probe.reason)
  if (probe.status === 'ok') return check(id, name, 'ok', probe.info)
  return check(
    id,
    name,
    'fail',
    `ip netns failed: ${probe.error}`,
    'km1s needs CAP_SYS_ADMIN and CAP_NET_ADMIN: run it on the host (or a privileged container) as root, ' +
      'with a kernel built with CONFIG_NET_NS',
  )
}

export function checkLink(kind: 'veth' | 'bridge', probe: Probe): DoctorCheck {
  const name = kind === 'veth' ? 'veth pairs' : 'bridges'
  if (probe.status === 'skipped') return skipped(kind, name, probe.reason)
  if (probe.status === 'ok') return check(kind, name, 'ok', probe.info)
  const config = kind === 'veth' ? 'CONFIG_VETH' : 'CONFIG_BRIDGE'
  return check(
    kind,
    name,
    'fail',
    `ip link add ... type ${kind} failed: ${probe.error}`,
    `load the module (modprobe ${kind}); a custom kernel needs ${config}`,
  )
}

export type TunState = 'char' | 'missing' | 'not-char'

/** /dev/net/tun matters only for wireguard-go, so a kernel with WireGuard makes its absence a warning. */
export function checkTun(state: TunState, kernelWireGuard: boolean): DoctorCheck {
  if (state === 'char') return check('tun', 'tun', 'ok', '/dev/net/tun is a character device')
  const detail =
    state === 'missing' ? '/dev/net/tun does not exist' : '/dev/net/tun exists but is not a character device'
  const fix =
    'modprobe tun (a custom kernel needs CONFIG_TUN); if it still is missing: ' +
    'mkdir -p /dev/net && mknod /dev/net/tun c 10 200 && chmod 600 /dev/net/tun'
  if (kernelWireGuard)
    return check('tun', 'tun', 'warn', `${detail} (kernel WireGuard does not need it)`, fix)
  return check('tun', 'tun', 'fail', `${detail}: wireguard-go cannot make interfaces`, fix)
}

export function checkNftables(nft: Tool | null, probe: Probe): DoctorCheck {
  const [id, name] = ['nftables', 'nftables']
  if (nft === null) return check(id, name, 'fail', 'nft not found', aptInstall('nftables'))
  if (probe.status === 'skipped') {
    const c = skipped(id, name, probe.reason)
    return { ...c, detail: `${c.detail} (nft ${describe(nft)} present)` }
  }
  if (probe.status === 'ok') return check(id, name, 'ok', `nft ${nft.version ?? nft.path}: ${probe.info}`)
  return check(
    id,
    name,
    'fail',
    `nft ${nft.version ?? nft.path}: ${probe.error}`,
    'load the modules (modprobe nf_tables nft_nat nft_masq nft_numgen nft_ct); a custom kernel needs ' +
      'CONFIG_NF_TABLES, CONFIG_NFT_NAT, CONFIG_NFT_MASQ, CONFIG_NFT_NUMGEN and CONFIG_NFT_CT',
  )
}

export interface WireGuardFacts {
  kernel: Probe
  wireguardGo: Tool | null
  wg: Tool | null
  /** wireguard-go makes its interface through /dev/net/tun. */
  tunUsable: boolean
}

export function checkWireGuard(facts: WireGuardFacts): DoctorCheck {
  const [id, name] = ['wireguard', 'WireGuard']
  const userspace = facts.wireguardGo !== null && facts.tunUsable
  const installBoth = aptInstall('wireguard-go', 'wireguard-tools')
  let engine: string
  if (facts.kernel.status === 'ok') engine = 'kernel WireGuard'
  else if (userspace && facts.wireguardGo !== null) {
    const kernel =
      facts.kernel.status === 'failed'
        ? `no kernel WireGuard: ${facts.kernel.error}`
        : `kernel WireGuard not tested: ${facts.kernel.reason}`
    engine = `wireguard-go ${describe(facts.wireguardGo)} (${kernel})`
  } else if (facts.kernel.status === 'skipped') {
    const c = skipped(id, name, facts.kernel.reason)
    const fix = `${c.fix}; or install userspace WireGuard: ${installBoth}`
    return { ...c, detail: `${c.detail} (kernel WireGuard untested; no usable wireguard-go)`, fix }
  } else {
    const goState =
      facts.wireguardGo === null
        ? 'wireguard-go not installed'
        : 'wireguard-go present but /dev/net/tun unusable'
    return check(
      id,
      name,
      'fail',
      `no kernel WireGuard (${facts.kernel.error}) and ${goState}`,
      facts.wireguardGo === null ? installBoth : 'fix the tun check',
    )
  }
  // km1s configures either engine with `wg set`, so wireguard-tools is needed as well.
  if (facts.wg === null)
    return check(id, name, 'warn', `${engine}; wg (wireguard-tools) not found`, aptInstall('wireguard-tools'))
  return check(id, name, 'ok', `${engine}; wg ${describe(facts.wg)}`)
}

export function checkCgroupLayout(info: CgroupInfo | null): DoctorCheck {
  const [id, name] = ['cgroup-layout', 'cgroup layout']
  if (info === null)
    return check(id, name, 'fail', 'cannot read /proc/mounts', 'km1s needs Linux with /proc mounted')
  if (!info.mounted)
    return check(
      id,
      name,
      'fail',
      'no cgroup filesystem is mounted',
      'mount -t cgroup2 none /sys/fs/cgroup (and add it to /etc/fstab)',
    )
  const v1 = `v1 controllers ${info.v1Controllers.join(',') || 'none'}`
  const v2 = `cgroup2 at ${info.v2Mount} offers ${info.v2Controllers.join(',') || 'no controllers'}`
  const detail = { v1: `v1: ${v1}`, v2: `v2: ${v2}`, hybrid: `hybrid: ${v1}; ${v2}` }[info.layout]
  return check(id, name, 'ok', detail)
}

export function checkCgroupControllers(
  info: CgroupInfo | null,
  host: HostFlavour,
  facts: Omit<ControllerFacts, 'layout'>,
): DoctorCheck {
  const [id, name] = ['cgroup-controllers', 'cgroup controllers']
  if (info === null || !info.mounted)
    return check(id, name, 'fail', 'no cgroup hierarchy to read', 'fix the cgroup layout check first')
  const missing = missingControllers(info)
  const available = availableControllers(info).join(',') || 'none'
  if (missing.length === 0)
    return check(id, name, 'ok', `${NEEDED_CONTROLLERS.join(', ')} available (all: ${available})`)
  return check(
    id,
    name,
    'fail',
    `missing ${missing.join(', ')}: km1s cannot limit containers (available: ${available})`,
    controllersFix(missing, host, { ...facts, layout: info.layout }),
  )
}

/**
 * With `detected` (the result of running a throw-away container, runtime/detect.ts) the verdict says what km1s
 * will use and how; without it, it is inferred from the cgroup layout alone.
 */
export function checkOciRuntime(
  crun: Tool | null,
  runc: Tool | null,
  info: CgroupInfo | null,
  detected?: OciRuntimeChoice,
): DoctorCheck {
  const [id, name] = ['oci-runtime', 'crun / runc']
  if (detected !== undefined && (crun !== null || runc !== null)) return ociVerdict(crun, runc, detected)
  const also = runc === null ? '' : `; runc ${describe(runc)} also present`
  // crun refuses a hybrid layout only when controllers sit on the cgroup2 side (PLATFORM.md: hugetlb here).
  if (crun !== null && info?.layout === 'hybrid' && info.v2Controllers.length > 0)
    return check(
      id,
      name,
      'warn',
      `crun ${describe(crun)} refuses this hybrid cgroup layout; km1s works around it by running crun with ` +
        `${info.v2Mount ?? 'the cgroup2 mount'} unmounted in a private mount namespace${also}`,
      'nothing to install; to run crun directly, boot with cgroup v2 only (kernel command line ' +
        '`cgroup_no_v1=all`, plus `systemd.unified_cgroup_hierarchy=1` under systemd)',
    )
  if (crun !== null) return check(id, name, 'ok', `crun ${describe(crun)}${also}`)
  if (runc !== null)
    return check(id, name, 'warn', `crun not found; runc ${describe(runc)} can stand in`, aptInstall('crun'))
  return check(
    id,
    name,
    'fail',
    'neither crun nor runc found: no isolated containers (only the unisolated process runtime)',
    aptInstall('crun'),
  )
}

function ociVerdict(crun: Tool | null, runc: Tool | null, detected: OciRuntimeChoice): DoctorCheck {
  const [id, name] = ['oci-runtime', 'crun / runc']
  if (detected.reason === 'needs root') return check(id, name, 'warn', 'needs root', RUN_AS_ROOT)
  const tool = detected.runtime === 'crun' ? crun : detected.runtime === 'runc' ? runc : null
  const version = tool?.version === null || tool === null ? '' : ` ${tool.version}`
  switch (detected.runtime) {
    case 'crun':
      if (detected.wrapper.length === 0)
        return check(id, name, 'ok', `km1s will use crun${version}: it runs as it is`)
      return check(
        id,
        name,
        'ok',
        `km1s will use crun${version} in a private mount namespace without the cgroup2 mount (hybrid layout: ` +
          'crun refuses it as it is)',
      )
    case 'runc':
      return check(
        id,
        name,
        'warn',
        `km1s will use runc${version} (${detected.reason.replace(/^runc \((.*)\)$/, '$1')})`,
        crun === null
          ? aptInstall('crun')
          : 'crun is installed but refused to run a container: see the error above',
      )
    case 'none':
      return check(
        id,
        name,
        'fail',
        `no OCI runtime could run a test container: ${detected.tried.map((t) => `${t.how}: ${t.error ?? 'failed'}`).join('; ')}`,
        crun === null
          ? aptInstall('crun')
          : 'reinstall crun (apt-get install --reinstall crun) and check the error above',
      )
  }
}

export function checkCatatonit(catatonit: Tool | null): DoctorCheck {
  if (catatonit === null)
    return check(
      'catatonit',
      'catatonit',
      'fail',
      'catatonit not found (neither on PATH nor /usr/libexec/podman/catatonit): no pause process for containers',
      aptInstall('catatonit'),
    )
  return check('catatonit', 'catatonit', 'ok', `catatonit ${describe(catatonit)}`)
}

export function checkNode(version: string): DoctorCheck {
  const major = Number.parseInt(version.replace(/^v/, '').split('.')[0] ?? '', 10)
  if (major >= MIN_NODE_MAJOR) return check('node', 'Node.js', 'ok', `Node.js v${version.replace(/^v/, '')}`)
  return check(
    'node',
    'Node.js',
    'fail',
    `Node.js v${version.replace(/^v/, '')} is too old: km1s needs ${MIN_NODE_MAJOR} or newer (libp2p 3)`,
    "run 'npm install' in the km1s project directory: it installs Node 24 for km1s (node_modules/node)",
  )
}

export function formatBytes(bytes: number): string {
  if (bytes >= GiB) return `${(bytes / GiB).toFixed(1)} GiB`
  return `${Math.floor(bytes / MiB)} MiB`
}

export type DiskFacts =
  | { dataDir: string; measuredAt: string; freeBytes: number }
  | { dataDir: string; error: string }

export function checkDisk(facts: DiskFacts): DoctorCheck {
  const [id, name] = ['disk', 'free disk']
  if ('error' in facts)
    return check(
      id,
      name,
      'warn',
      `cannot measure free space for ${facts.dataDir}: ${facts.error}`,
      'check the data directory path (--data-dir)',
    )
  const where =
    facts.measuredAt === facts.dataDir
      ? facts.dataDir
      : `${facts.dataDir} (not created yet; measured at ${facts.measuredAt})`
  const detail = `${formatBytes(facts.freeBytes)} free for ${where}`
  const fix = `free space on that filesystem, or point --data-dir at a larger one`
  if (facts.freeBytes < DISK_FAIL_BYTES)
    return check(id, name, 'fail', `${detail}: below ${formatBytes(DISK_FAIL_BYTES)}`, fix)
  if (facts.freeBytes < DISK_WARN_BYTES)
    return check(id, name, 'warn', `${detail}: below ${formatBytes(DISK_WARN_BYTES)}`, fix)
  return check(id, name, 'ok', detail)
}
