// km1s's own cgroups. Each process of a container runs in `/km1s-<instance>/<container>/<process>`, which
// km1s creates (with the limits) before the process starts and removes after it ended; the OCI runtime
// puts the process one level below, in `<that>/oci` (OCI_LEAF), a directory it creates and deletes itself.
// The limits live on km1s's directory so they and its counters do not depend on the runtime, and the
// `process` runtime (no crun) can use the same directories.
// Plain cgroupfs paths (PID 1 is not always systemd); cgroup v1, hybrid (v1 + /sys/fs/cgroup/unified) and
// pure v2 (a Raspberry Pi). Nothing here knows crun beyond the leaf's name.
import { close, constants, openSync, readFileSync, write } from 'node:fs'
import { mkdir as mkdirFs, readdir, readFile, rmdir, stat, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { errorMessage, Km1sError } from '../common/errors.ts'
import type { Logger } from '../common/logger.ts'
import * as z from '../common/schema.ts'
import { detectCgroupLayout as layoutOfMounts, parseMounts } from '../doctor/cgroup.ts'
import { CPU_PERIOD_US, MIN_CPU_MILLICORES, MIN_MEMORY_BYTES } from './oci.ts'

/** The directory the OCI runtime creates under km1s's cgroup for the process itself. */
export const OCI_LEAF = 'oci'
export const CGROUP_ROOT = '/sys/fs/cgroup'

export type CgroupLayoutName = 'v1' | 'hybrid' | 'v2' | 'none'

export interface CgroupLimits {
  memoryBytes: number
  /** 1000 = one CPU; absent: no quota. */
  cpuMillicores?: number
  pids: number
}

export interface CgroupUsage {
  memoryBytes: number
  /** Tasks (threads included) in the subtree. */
  pids: number
}

/** The cgroup hierarchies mounted at or directly below a root. */
export interface CgroupHierarchies {
  layout: CgroupLayoutName
  /** v1 controller → the directory it is mounted on (`cpu` and `cpuacct` may share one). */
  v1: Map<string, string>
  /** The cgroup2 mount (the root itself on v2, `<root>/unified` on hybrid), or null. */
  unified: string | null
  /** Every hierarchy (each v1 mount, named ones like name=systemd included, and cgroup2): where leftovers can be. */
  all: string[]
}

export interface CgroupsOptions {
  root?: string
  log: Logger
  /** /proc/mounts text, for tests with a fake root. */
  mountsText?: string
}

// The controllers km1s limits with.
const V2_CONTROLLERS = ['memory', 'pids', 'cpu'] as const
const V1_CONTROLLERS = ['memory', 'cpu', 'pids'] as const

/**
 * `memory: false` — outside the memory accounting of its own: for the supervisors of containers (shims and
 * their `crun run`s). A memory cgroup in which crun makes a container's cgroups stays behind as a dying
 * cgroup after its removal (measured on v1: ~1 per container created and removed, where outside it none).
 * v1 and hybrid: not in the memory hierarchy at all (accounted where the agent is). v2: the parent does not
 * hand the memory controller down, so the cgroup is accounted in its parent's — `/<prefix>/_shims`, made
 * once (names.ts); not measured, this VM's cgroup2 has no memory controller.
 */
export interface HierarchyChoice {
  memory?: boolean
}

/** v2: asks the kernel to reclaim all a cgroup holds (best effort; nothing when it has no memory files). */
async function reclaimAll(dir: string): Promise<void> {
  const current = await readNumber(join(dir, 'memory.current'))
  if (current === null || current <= 0) return
  await writeFile(join(dir, 'memory.reclaim'), String(current)).catch(() => {})
}

function v1Controllers(opts: HierarchyChoice): readonly (typeof V1_CONTROLLERS)[number][] {
  return opts.memory === false ? V1_CONTROLLERS.filter((c) => c !== 'memory') : V1_CONTROLLERS
}
const KILL_WAIT_MS = 2_000
const RMDIR_TRIES = 25
// Written to cpu.max / cfs_period_us; quota = millicores × 100 µs per 100 ms period.
const QUOTA_US_PER_MILLICORE = CPU_PERIOD_US / 1000

const PATH_RULE =
  'it must start with /km1s- and name directories with lowercase letters, digits, dots, dashes and underscores (no "..")'
const segmentOk = (s: string) => s.split('/').every((part) => part.length <= 255)
const CgroupPath = z.string().check(
  z.maxLength(1024),
  z.regex(/^\/km1s-[a-z0-9][a-z0-9._-]*(\/[a-z0-9_][a-z0-9._-]*)*$/),
  z.refine((s) => !s.includes('..') && segmentOk(s)),
)
const CgroupPrefix = z.string().check(
  z.maxLength(255),
  z.regex(/^km1s-[a-z0-9][a-z0-9._-]*$/),
  z.refine((s) => !s.includes('..')),
)
const Limits = z.strictObject({
  memoryBytes: z.number().check(z.int(), z.minimum(MIN_MEMORY_BYTES), z.maximum(Number.MAX_SAFE_INTEGER)),
  cpuMillicores: z.optional(z.number().check(z.int(), z.minimum(MIN_CPU_MILLICORES), z.maximum(1_000_000))),
  // PID_MAX_LIMIT: the kernel refuses more.
  pids: z.number().check(z.int(), z.minimum(1), z.maximum(4_194_304)),
})

/** Throws Km1sError ERR_INVALID_CGROUP_PATH unless `path` is a km1s cgroup path (absolute, below /km1s-…). */
export function validateCgroupPath(path: string): string {
  if (CgroupPath.safeParse(path).success) return path
  throw new Km1sError('ERR_INVALID_CGROUP_PATH', `Invalid cgroup path ${JSON.stringify(path)}: ${PATH_RULE}.`)
}

export function validateCgroupLimits(limits: CgroupLimits): CgroupLimits {
  const parsed = Limits.safeParse(limits)
  if (parsed.success) return parsed.data
  const issue = parsed.error.issues[0]
  throw new Km1sError(
    'ERR_INVALID_CGROUP_LIMITS',
    `Invalid cgroup limits: ${issue?.path.join('.') ?? '?'}: ${issue?.message ?? 'invalid'}; memory at least 4 MiB, CPU at least 10 millicores, pids at least 1.`,
  )
}

/** The hierarchies mounted at `root` or directly below it, from /proc/mounts (the same rules as doctor). */
export function hierarchiesFromMounts(mountsText: string, root = CGROUP_ROOT): CgroupHierarchies {
  const lines = mountsText.split('\n').filter((line) => {
    const entry = parseMounts(line)[0]
    return (
      entry !== undefined &&
      (entry.fstype === 'cgroup' || entry.fstype === 'cgroup2') &&
      (entry.target === root || dirname(entry.target) === root)
    )
  })
  const info = layoutOfMounts(lines.join('\n'))
  const entries = parseMounts(lines.join('\n'))
  const controllers = new Set(info.v1Controllers)
  const v1 = new Map<string, string>()
  for (const entry of entries.filter((e) => e.fstype === 'cgroup'))
    for (const option of entry.options)
      if (controllers.has(option) && !v1.has(option)) v1.set(option, entry.target)
  const all = [...new Set(entries.map((e) => e.target))].sort()
  return { layout: info.mounted ? info.layout : 'none', v1, unified: info.v2Mount, all }
}

/** The cgroup layout under `root`: v1, hybrid (v1 + cgroup2 at `<root>/unified`), v2, or none mounted. */
export async function detectCgroupLayout(root = CGROUP_ROOT, mountsText?: string): Promise<CgroupLayoutName> {
  const text = mountsText ?? (await readFile('/proc/mounts', 'utf8').catch(() => ''))
  return hierarchiesFromMounts(text, root).layout
}

/** A value of a flat keyed file (memory.events, memory.oom_control: "key value" lines); null when absent. */
export function keyedValue(text: string, key: string): number | null {
  for (const line of text.split('\n')) {
    const [name, value] = line.trim().split(/\s+/)
    if (name === key && value !== undefined && /^\d+$/.test(value)) return Number(value)
  }
  return null
}

/** The pids in a cgroup.procs text. */
export function parsePids(text: string): number[] {
  return text
    .split('\n')
    .filter((line) => /^\d+$/.test(line.trim()))
    .map(Number)
}

/** cgroup v1 cpu.cfs_quota_us: -1 is "no quota". */
export function v1CpuQuota(millicores: number | undefined): string {
  return millicores === undefined ? '-1' : String(millicores * QUOTA_US_PER_MILLICORE)
}

/** cgroup v2 cpu.max: "quota period". */
export function v2CpuMax(millicores: number | undefined): string {
  return `${millicores === undefined ? 'max' : millicores * QUOTA_US_PER_MILLICORE} ${CPU_PERIOD_US}`
}

/**
 * v1 keeps memory.memsw.limit_in_bytes ≥ memory.limit_in_bytes at every write: raising sets memsw first,
 * lowering sets the memory limit first. `current` is the memory limit now (null: unknown, i.e. unlimited).
 */
export function v1MemoryWriteOrder(current: number | null, next: number): Array<'memory' | 'memsw'> {
  return current !== null && next > current ? ['memsw', 'memory'] : ['memory', 'memsw']
}

/**
 * The cgroup of this process in one hierarchy, from /proc/self/cgroup (`N:controllers:/path`, `0::/path` for
 * cgroup2): the controller `pids` on v1 and hybrid, the unified tree on v2. Null when it is not listed.
 */
export function ownCgroup(procSelfCgroup: string, layout: CgroupLayoutName): string | null {
  for (const line of procSelfCgroup.split('\n')) {
    const m = /^[0-9]+:([^:]*):(\/.*)$/.exec(line)
    if (m === null) continue
    const [, controllers = '', path = ''] = m
    const wanted = layout === 'v2' ? controllers === '' : controllers.split(',').includes('pids')
    if (wanted && !path.split('/').includes('..')) return path
  }
  return null
}

export class Cgroups {
  readonly root: string
  #log: Logger
  #mountsText: string | undefined
  #hierarchies: Promise<CgroupHierarchies> | undefined
  #warned = new Set<string>()
  #warming = false
  /** The hierarchies, once read. */
  #known: CgroupHierarchies | undefined
  /** Seen once: whether this kernel has swap accounting (memsw files). */
  #v1MemoryFacts: { memsw: boolean } | undefined

  constructor(opts: CgroupsOptions) {
    this.root = opts.root ?? CGROUP_ROOT
    this.#log = opts.log
    this.#mountsText = opts.mountsText
  }

  /** Read once: mounts do not change under a running agent. */
  hierarchies(): Promise<CgroupHierarchies> {
    this.#hierarchies ??= (async () => {
      const text = this.#mountsText ?? (await readFile('/proc/mounts', 'utf8').catch(() => ''))
      this.#known = hierarchiesFromMounts(text, this.root)
      return this.#known
    })()
    return this.#hierarchies
  }

  /**
   * Creates `path` with these limits, or updates them (idempotent). v1: in the memory, cpu and pids
   * hierarchies; v2: in the unified tree, with memory, pids and cpu enabled in every ancestor.
   */
  async ensure(path: string, limits: CgroupLimits, opts: HierarchyChoice = {}): Promise<void> {
    validateCgroupPath(path)
    const wanted = validateCgroupLimits(limits)
    const started = performance.now()
    const h = await this.hierarchies()
    if (h.layout === 'v2' && h.unified !== null) await this.#ensureV2(h.unified, path, wanted, opts)
    else if (h.layout === 'v1' || h.layout === 'hybrid') await this.#ensureV1(h, path, wanted, opts)
    else
      throw new Km1sError(
        'ERR_CGROUP_UNAVAILABLE',
        `No cgroup filesystem is mounted at ${this.root}; mount cgroup2 there or use the process runtime.`,
      )
    this.#log.debug({ path, limits: wanted, ms: Math.round(performance.now() - started) }, 'cgroup ensured')
  }

  /** Directories where a process must be written (cgroup.procs) to run under the limits ensure set. */
  async limitDirs(path: string, opts: HierarchyChoice = {}): Promise<string[]> {
    validateCgroupPath(path)
    const h = await this.hierarchies()
    if (h.layout === 'v2' && h.unified !== null) return [join(h.unified, path)]
    return [
      ...new Set(
        v1Controllers(opts)
          .map((c) => h.v1.get(c))
          .filter((d) => d !== undefined),
      ),
    ].map((d) => join(d, path))
  }

  /**
   * Starts the wait that the next move of a process into a cgroup would make, so that it overlaps the work
   * before that move. The kernel makes the first move after a quiet spell wait for an RCU grace period (its
   * cgroup_threadgroup_rwsem: 5–15 ms on this kind of machine, measured), and moves in the next few ms go
   * through at once. A new container's shim moves itself into its cgroup before crun may run (shim.ts), so
   * that wait sat on every lone create's critical path. Writing the agent's own pid into the cgroup it is in
   * moves nothing and pays the wait on a threadpool thread while the agent prepares the container. One at a
   * time; best effort (errors are ignored: the move itself still works, only later).
   */
  warmMoves(): void {
    const h = this.#known
    if (this.#warming || h === undefined) return
    const mount = h.layout === 'v2' ? h.unified : h.v1.get('pids')
    if (mount === null || mount === undefined) return
    // Opened on the main thread (procfs and cgroupfs, microseconds) so that the write is the first of the
    // create's work in the threadpool's queue; the path read afresh, so the agent is never moved back into
    // a cgroup it has left.
    let fd: number
    try {
      const own = ownCgroup(readFileSync('/proc/self/cgroup', 'utf8'), h.layout)
      if (own === null) return
      fd = openSync(join(mount, own, 'cgroup.procs'), constants.O_WRONLY)
    } catch {
      return
    }
    this.#warming = true
    write(fd, String(process.pid), () => {
      close(fd, () => {})
      this.#warming = false
    })
  }

  /** Moves a process into `path` (the process runtime; tests). Call ensure first. */
  async attach(path: string, pid: number): Promise<void> {
    if (!Number.isSafeInteger(pid) || pid <= 0)
      throw new Km1sError('ERR_INVALID_PID', `Invalid pid ${pid}: it must be a positive integer.`)
    for (const dir of await this.limitDirs(path)) await this.#write(join(dir, 'cgroup.procs'), String(pid))
  }

  /**
   * How many processes the kernel killed for memory in this cgroup's subtree; 0 when unknown or absent.
   * v2 counts hierarchically: memory.events of `path` includes its children, removed ones too. v1 counts
   * only in the memory cgroup of the killed process, not in the ancestor whose limit was hit (measured on
   * kernel 6.18): the subtree is summed, and a count in a leaf is lost with the leaf — a foreground
   * `crun run` deletes its leaf before it returns. On v1 the process must sit in `path` itself to be seen.
   */
  async oomKills(path: string): Promise<number> {
    validateCgroupPath(path)
    const h = await this.hierarchies()
    if (h.layout === 'v2' && h.unified !== null)
      return keyedValue(await readText(join(h.unified, path, 'memory.events')), 'oom_kill') ?? 0
    const memory = h.v1.get('memory')
    if (memory === undefined) return 0
    const texts = await Promise.all(
      (await subtree(join(memory, path))).map((dir) => readText(join(dir, 'memory.oom_control'))),
    )
    return texts.reduce((sum, text) => sum + (keyedValue(text, 'oom_kill') ?? 0), 0)
  }

  /** The highest memory use seen (v1 memory.max_usage_in_bytes, v2 memory.peak); null when not known. */
  async memoryPeak(path: string): Promise<number | null> {
    validateCgroupPath(path)
    const h = await this.hierarchies()
    if (h.layout === 'v2' && h.unified !== null) return readNumber(join(h.unified, path, 'memory.peak'))
    const memory = h.v1.get('memory')
    return memory === undefined ? null : readNumber(join(memory, path, 'memory.max_usage_in_bytes'))
  }

  /** Current memory use (page cache included) and tasks; null when the cgroup does not exist. */
  async usage(path: string): Promise<CgroupUsage | null> {
    validateCgroupPath(path)
    const h = await this.hierarchies()
    const v2 = h.layout === 'v2' && h.unified !== null
    const memoryDir = v2 ? h.unified : h.v1.get('memory')
    const pidsDir = v2 ? h.unified : h.v1.get('pids')
    if (memoryDir === undefined || memoryDir === null) return null
    const memoryBytes = await readNumber(
      join(memoryDir, path, v2 ? 'memory.current' : 'memory.usage_in_bytes'),
    )
    if (memoryBytes === null) return null
    const pids = pidsDir ? await readNumber(join(pidsDir, path, 'pids.current')) : null
    return { memoryBytes, pids: pids ?? (await this.procs(path)).length }
  }

  /** Every process in the subtree of `path`, in any hierarchy where it exists. */
  async procs(path: string): Promise<number[]> {
    validateCgroupPath(path)
    return this.#procsIn(await this.#existing(path))
  }

  /**
   * Kills every process in the subtree (SIGKILL), waits until it is empty (at most 2 s), then removes the
   * subtree depth-first in every hierarchy where it exists: the OCI runtime makes its leaf in all of them.
   * Idempotent. Returns the directories that could not be removed (a leak: logged as a warning).
   */
  async remove(path: string): Promise<string[]> {
    validateCgroupPath(path)
    const started = performance.now()
    const tops = await this.#existing(path)
    if (tops.length === 0) return []
    const h = await this.hierarchies()
    const deadline = Date.now() + KILL_WAIT_MS
    let killed = 0
    for (let round = 0; ; round++) {
      const pids = await this.#procsIn(tops)
      if (pids.length === 0) break
      if (Date.now() > deadline) {
        this.#log.warn({ path, pids }, 'processes outlived SIGKILL in a km1s cgroup')
        break
      }
      killed += this.#kill(path, pids)
      await sleep(Math.min(2 ** round, 20))
    }
    // Hierarchies in parallel; within one, children before their parent.
    const perHierarchy = await Promise.all(
      tops.map(async (top) => {
        const stayed: string[] = []
        const v1Memory = top.startsWith(`${h.v1.get('memory') ?? '\0'}/`)
        const v2 = h.layout === 'v2' && top.startsWith(`${h.unified}/`)
        for (const dir of await subtree(top)) {
          // The kernel keeps a removed memory cgroup, dying, while pages are still charged to it: measured
          // on v1, ~1 per container created and removed, which costs kernel memory and, in the end, memory
          // cgroup ids (at most 65,535). Emptied first, it goes. v2 has no force_empty: memory.reclaim
          // (Linux 5.19) of what it holds — not measured here.
          if (v1Memory) await writeFile(join(dir, 'memory.force_empty'), '0').catch(() => {})
          if (v2) await reclaimAll(dir)
          if (!(await this.#rmdir(path, dir))) stayed.push(dir)
        }
        return stayed
      }),
    )
    const left = perHierarchy.flat()
    if (left.length > 0) this.#log.warn({ path, left }, 'km1s cgroup directories could not be removed')
    this.#log.debug({ path, killed, ms: Math.round(performance.now() - started) }, 'cgroup removed')
    return left
  }

  /** Removes a whole instance (`/km1s-<instance>`) or container: the sweep's name for remove. */
  removeTree(prefixPath: string): Promise<string[]> {
    return this.remove(prefixPath)
  }

  /**
   * The cgroups below `/<prefix>` at depth 1 (`/<prefix>/<container>`) and 2 (`…/<process>`), found in any
   * hierarchy — a crash can leave one hierarchy behind. Sorted; the OCI leaves are not listed.
   */
  async list(prefix: string): Promise<string[]> {
    if (!CgroupPrefix.safeParse(prefix).success)
      throw new Km1sError(
        'ERR_INVALID_CGROUP_PATH',
        `Invalid cgroup prefix ${JSON.stringify(prefix)}: ${PATH_RULE}.`,
      )
    const found = new Set<string>()
    for (const hierarchy of (await this.hierarchies()).all) {
      for (const container of await subdirs(join(hierarchy, prefix))) {
        found.add(`/${prefix}/${container}`)
        for (const proc of await subdirs(join(hierarchy, prefix, container)))
          found.add(`/${prefix}/${container}/${proc}`)
      }
    }
    return [...found].sort()
  }

  async #ensureV1(
    h: CgroupHierarchies,
    path: string,
    limits: CgroupLimits,
    opts: HierarchyChoice,
  ): Promise<void> {
    const memory = h.v1.get('memory')
    if (memory === undefined)
      throw new Km1sError(
        'ERR_CGROUP_UNAVAILABLE',
        `The memory cgroup controller is not mounted under ${this.root}; mount it or use the process runtime.`,
      )
    const cpu = h.v1.get('cpu')
    const pids = h.v1.get('pids')
    const missing = V1_CONTROLLERS.filter((c) => !h.v1.has(c))
    if (missing.length > 0)
      this.#warnOnce(
        `v1-missing`,
        { missing },
        `cgroup controllers ${missing.join(', ')} are not mounted: those limits are not set`,
      )
    const withMemory = opts.memory !== false
    const dirs = [...new Set([withMemory ? memory : undefined, cpu, pids])].filter((d) => d !== undefined)
    const made = await Promise.all(dirs.map((dir) => this.#mkdir(join(dir, path))))
    // The three hierarchies are independent: written in parallel.
    await Promise.all([
      withMemory ? this.#v1Memory(join(memory, path), path, limits.memoryBytes, made[0] === true) : undefined,
      cpu === undefined
        ? undefined
        : this.#write(join(cpu, path, 'cpu.cfs_period_us'), String(CPU_PERIOD_US)).then(() =>
            this.#write(join(cpu, path, 'cpu.cfs_quota_us'), v1CpuQuota(limits.cpuMillicores)),
          ),
      pids === undefined ? undefined : this.#write(join(pids, path, 'pids.max'), String(limits.pids)),
    ])
  }

  /**
   * `fresh`: made just now, so unlimited — the write order is known without reading the limit, and whether
   * the kernel has swap accounting and hierarchical accounting was seen in an earlier cgroup (three reads
   * fewer for each of a container's three cgroups; twenty creates at once queue on libuv's four threads).
   */
  async #v1Memory(mem: string, path: string, bytes: number, fresh: boolean): Promise<void> {
    const memsw = join(mem, 'memory.memsw.limit_in_bytes')
    const known = fresh ? this.#v1MemoryFacts : undefined
    const [hierarchical, hasMemsw, current] = await Promise.all([
      known ? '1' : readText(join(mem, 'memory.use_hierarchy')),
      known ? known.memsw : exists(memsw),
      known ? null : readNumber(join(mem, 'memory.limit_in_bytes')),
    ])
    this.#v1MemoryFacts ??= { memsw: hasMemsw }
    if (hierarchical.trim() === '0')
      this.#warnOnce(
        'use-hierarchy',
        { path },
        'memory.use_hierarchy is 0: a process in a child cgroup escapes the memory limit of its parent',
      )
    for (const which of v1MemoryWriteOrder(current, bytes)) {
      // Without swap accounting the kernel has no memsw files, and swap is not limited.
      if (which === 'memsw' && hasMemsw) await this.#write(memsw, String(bytes))
      if (which === 'memory') await this.#write(join(mem, 'memory.limit_in_bytes'), String(bytes))
    }
  }

  async #ensureV2(
    unified: string,
    path: string,
    limits: CgroupLimits,
    opts: HierarchyChoice = {},
  ): Promise<void> {
    const available = new Set((await readText(join(unified, 'cgroup.controllers'))).split(/\s+/))
    const missing = V2_CONTROLLERS.filter((c) => !available.has(c))
    if (missing.includes('memory'))
      throw new Km1sError(
        'ERR_CGROUP_UNAVAILABLE',
        `The cgroup2 tree at ${unified} has no memory controller; enable it (kernel cmdline cgroup_enable=memory on a Raspberry Pi) or use the process runtime.`,
      )
    if (missing.length > 0)
      this.#warnOnce(
        'v2-missing',
        { missing },
        `cgroup2 controllers ${missing.join(', ')} are not available: those limits are not set`,
      )
    await this.#mkdir(join(unified, path))
    const enabled = new Set(V2_CONTROLLERS.filter((c) => available.has(c)))
    // Enable from the root down: a controller can only be enabled where the parent enabled it. Without
    // memory (opts), the parent does not hand memory down: the cgroup is accounted in its parent's.
    const parts = path.split('/').filter((p) => p !== '')
    const withMemory = opts.memory !== false
    for (let depth = 0; depth < parts.length; depth++) {
      const dir = join(unified, ...parts.slice(0, depth))
      const on = new Set((await readText(join(dir, 'cgroup.subtree_control'))).split(/\s+/))
      const last = depth === parts.length - 1
      const toEnable = [...enabled].filter((c) => !on.has(c) && (withMemory || !last || c !== 'memory'))
      if (toEnable.length === 0) continue
      try {
        await writeFile(join(dir, 'cgroup.subtree_control'), toEnable.map((c) => `+${c}`).join(' '))
      } catch {
        // All or nothing: find the one the kernel refuses (cpu with a realtime process, say), keep the rest.
        for (const c of toEnable) {
          try {
            await writeFile(join(dir, 'cgroup.subtree_control'), `+${c}`)
          } catch (err) {
            enabled.delete(c)
            this.#warnOnce(
              `v2-enable-${c}`,
              { dir, err: errorMessage(err) },
              `could not enable the ${c} cgroup controller: its limit is not set`,
            )
          }
        }
      }
    }
    if (!enabled.has('memory'))
      throw new Km1sError(
        'ERR_CGROUP_UNAVAILABLE',
        `The memory cgroup controller could not be enabled under ${unified}; check that nothing else manages that tree.`,
      )
    const dir = join(unified, path)
    if (withMemory) {
      await this.#write(join(dir, 'memory.max'), String(limits.memoryBytes))
      if (await exists(join(dir, 'memory.swap.max'))) await this.#write(join(dir, 'memory.swap.max'), '0')
    }
    if (enabled.has('cpu')) await this.#write(join(dir, 'cpu.max'), v2CpuMax(limits.cpuMillicores))
    if (enabled.has('pids')) await this.#write(join(dir, 'pids.max'), String(limits.pids))
  }

  /** `path` in each hierarchy where it exists. */
  async #existing(path: string): Promise<string[]> {
    const dirs = (await this.hierarchies()).all.map((h) => join(h, path))
    const present = await Promise.all(dirs.map((d) => isDir(d)))
    return dirs.filter((_, i) => present[i])
  }

  async #procsIn(tops: string[]): Promise<number[]> {
    const dirs = (await Promise.all(tops.map(subtree))).flat()
    const texts = await Promise.all(dirs.map((dir) => readText(join(dir, 'cgroup.procs'))))
    return [...new Set(texts.flatMap(parsePids))].sort((a, b) => a - b)
  }

  #kill(path: string, pids: number[]): number {
    let n = 0
    for (const pid of pids) {
      // A km1s cgroup never holds km1s itself or init; refuse rather than take the node down.
      if (pid === process.pid || pid === 1) {
        this.#warnOnce(
          `self-${path}`,
          { path, pid },
          'not killing this process or PID 1 found in a km1s cgroup',
        )
        continue
      }
      try {
        process.kill(pid, 'SIGKILL')
        n++
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ESRCH')
          this.#warnOnce(
            `kill-${pid}`,
            { path, pid, err: errorMessage(err) },
            'could not kill a process in a km1s cgroup',
          )
      }
    }
    return n
  }

  async #rmdir(path: string, dir: string): Promise<boolean> {
    for (let i = 0; i < RMDIR_TRIES; i++) {
      try {
        await rmdir(dir)
        return true
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code
        if (code === 'ENOENT') return true
        if (code !== 'EBUSY' && code !== 'ENOTEMPTY') {
          this.#log.warn({ dir, err: errorMessage(err) }, 'could not remove a km1s cgroup')
          return false
        }
        // A process that entered after the wait, or one still exiting.
        this.#kill(path, parsePids(await readText(join(dir, 'cgroup.procs'))))
        await sleep(20)
      }
    }
    return false
  }

  /** True when it made `dir` itself (recursive mkdir names the first directory it made, if any). */
  async #mkdir(dir: string): Promise<boolean> {
    try {
      return (await mkdirFs(dir, { recursive: true })) !== undefined
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS')
        throw new Km1sError(
          'ERR_CGROUP_PERMISSION',
          `km1s cannot create cgroups under ${this.root} (${code}): run the agent as root, or use the process runtime.`,
          { cause: err },
        )
      throw err
    }
  }

  async #write(file: string, value: string): Promise<void> {
    try {
      await writeFile(file, value)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? errorMessage(err)
      const hint =
        code === 'EBUSY'
          ? 'the processes in it use more than the new limit; stop them or choose a larger limit'
          : 'check that the value is valid for this kernel'
      throw new Km1sError('ERR_CGROUP_WRITE', `Could not write ${value} to ${file} (${code}): ${hint}.`, {
        cause: err,
      })
    }
  }

  #warnOnce(key: string, fields: Record<string, unknown>, message: string): void {
    if (this.#warned.has(key)) return
    this.#warned.add(key)
    this.#log.warn(fields, message)
  }
}

async function readText(file: string): Promise<string> {
  return readFile(file, 'utf8').catch(() => '')
}

async function readNumber(file: string): Promise<number | null> {
  const text = (await readText(file)).trim()
  return /^\d+$/.test(text) ? Number(text) : null
}

async function exists(file: string): Promise<boolean> {
  return stat(file).then(
    () => true,
    () => false,
  )
}

async function isDir(dir: string): Promise<boolean> {
  return stat(dir).then(
    (s) => s.isDirectory(),
    () => false,
  )
}

async function subdirs(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => [])
  return entries.filter((e) => e.isDirectory()).map((e) => e.name)
}

/** `top` and every directory below it, children before their parent (the order rmdir needs). */
async function subtree(top: string): Promise<string[]> {
  const entries = await readdir(top, { withFileTypes: true }).catch(() => null)
  if (entries === null) return []
  const below = await Promise.all(
    entries.filter((e) => e.isDirectory()).map((e) => subtree(join(top, e.name))),
  )
  return [...below.flat(), top]
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}
