// Pure parsing of the kernel's cgroup views: /proc/mounts, cgroup.controllers and /proc/cgroups.
import type { CgroupInfo, CgroupLayout } from './types.ts'

/** The controllers km1s sets limits with (DESIGN.md, Runtime). */
export const NEEDED_CONTROLLERS = ['cpu', 'memory', 'pids'] as const

// Mount options of a v1 cgroup mount mix controllers with generic flags; only these names are controllers.
const V1_CONTROLLERS = new Set([
  'blkio',
  'cpu',
  'cpuacct',
  'cpuset',
  'debug',
  'devices',
  'freezer',
  'hugetlb',
  'memory',
  'misc',
  'net_cls',
  'net_prio',
  'perf_event',
  'pids',
  'rdma',
])

export interface MountEntry {
  source: string
  target: string
  fstype: string
  options: string[]
}

/** /proc/mounts escapes space, tab, newline and backslash in paths as octal (`\040`). */
function unescapeMountField(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)))
}

export function parseMounts(text: string): MountEntry[] {
  const entries: MountEntry[] = []
  for (const line of text.split('\n')) {
    const [source, target, fstype, options] = line.trim().split(/\s+/)
    if (source === undefined || target === undefined || fstype === undefined) continue
    entries.push({
      source: unescapeMountField(source),
      target: unescapeMountField(target),
      fstype,
      options: options === undefined ? [] : options.split(','),
    })
  }
  return entries
}

/** Splits the text of a cgroup.controllers file ("cpuset cpu io memory pids"). */
export function parseControllersFile(text: string): string[] {
  return text.split(/\s+/).filter((name) => name !== '')
}

/**
 * Decides the cgroup layout from /proc/mounts. Pass the text of the cgroup2 root's cgroup.controllers
 * (read by the caller from `v2Mount`) to fill `v2Controllers`; the mounts alone cannot tell them.
 */
export function detectCgroupLayout(mountsText: string, v2ControllersText = ''): CgroupInfo {
  const mounts = parseMounts(mountsText)
  const v1Mounts = mounts.filter((m) => m.fstype === 'cgroup')
  const v1Controllers = [
    ...new Set(v1Mounts.flatMap((m) => m.options.filter((o) => V1_CONTROLLERS.has(o)))),
  ].sort()
  // Prefer the system's own cgroup2 mount over bind mounts of it elsewhere (containers, chroots).
  const v2Mount =
    mounts
      .filter((m) => m.fstype === 'cgroup2')
      .map((m) => m.target)
      .sort((a, b) => rankCgroup2Mount(a) - rankCgroup2Mount(b) || a.length - b.length)[0] ?? null
  const mounted = v1Mounts.length > 0 || v2Mount !== null
  let layout: CgroupLayout = 'v2'
  if (v1Mounts.length > 0) layout = v2Mount === null ? 'v1' : 'hybrid'
  const v2Controllers = v2Mount === null ? [] : [...new Set(parseControllersFile(v2ControllersText))].sort()
  return { layout, v1Controllers, v2Controllers, v2Mount, mounted }
}

function rankCgroup2Mount(target: string): number {
  if (target === '/sys/fs/cgroup') return 0
  if (target === '/sys/fs/cgroup/unified') return 1
  return target.startsWith('/sys/fs/cgroup/') ? 2 : 3
}

/** Every controller usable in either hierarchy (a controller is bound to at most one of them). */
export function availableControllers(info: CgroupInfo): string[] {
  return [...new Set([...info.v1Controllers, ...info.v2Controllers])].sort()
}

export function missingControllers(
  info: CgroupInfo,
  needed: readonly string[] = NEEDED_CONTROLLERS,
): string[] {
  const available = new Set(availableControllers(info))
  return needed.filter((name) => !available.has(name))
}

/**
 * Parses /proc/cgroups ("subsys_name hierarchy num_cgroups enabled") into name → enabled.
 * It tells a controller disabled on the kernel command line from one compiled in but not mounted.
 */
export function parseProcCgroups(text: string): Map<string, boolean> {
  const enabled = new Map<string, boolean>()
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue
    const [name, , , flag] = line.trim().split(/\s+/)
    if (name === undefined || name === '' || flag === undefined) continue
    enabled.set(name, flag === '1')
  }
  return enabled
}
