// Which OCI runtime km1s can use on this host, found by running a throw-away container, never by guessing.
// Order: crun as it is; crun in a private mount namespace without the cgroup2 mount (hybrid layouts, which
// crun 1.8 refuses: PLATFORM.md); runc. Every attempt is cleaned up: OCI state, cgroups, bundle.
import { spawn } from 'node:child_process'
import { closeSync, openSync } from 'node:fs'
import { mkdtemp, readdir, readFile, rm, rmdir, statfs, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { processAlive } from '../common/process.ts'
import { detectCgroupLayout } from '../doctor/cgroup.ts'
import { findExecutable } from '../doctor/exec.ts'
import type { CgroupLayout } from '../doctor/types.ts'
import { prepareRootfs, presentSystemPaths } from './host.ts'
import { ociConfig, renderHostname, renderHosts, renderResolvConf } from './oci.ts'

export type OciRuntimeName = 'crun' | 'runc'

export interface OciRuntimeAttempt {
  /** What was tried, in words: "crun run", "runc run", … */
  how: string
  ok: boolean
  /** The runtime's own first error line, or why the attempt could not run. */
  error?: string
  ms: number
}

export interface OciRuntimeChoice {
  runtime: OciRuntimeName | 'none'
  /** The runtime binary, absolute; null with 'none'. */
  binary: string | null
  /** argv prefix to put before `binary` for every call (run, exec, kill, delete); empty when none is needed. */
  wrapper: string[]
  /** One line for people: which runtime and why. */
  reason: string
  tried: OciRuntimeAttempt[]
  layout: CgroupLayout | null
}

export interface DetectOptions {
  /** Probe again instead of returning this process's cached result. */
  refresh?: boolean
  /** Per attempt, and for each cleanup command. */
  timeoutMs?: number
  /** Overrides for tests: binaries (null: absent), /proc/mounts text, the cgroup root. */
  crun?: string | null
  runc?: string | null
  mountsText?: string
  cgroupRoot?: string
}

export const PROBE_PREFIX = 'km1s-probe-'
const DEFAULT_TIMEOUT_MS = 3_000
const CGROUP_ROOT = '/sys/fs/cgroup'
const STATE_DIRS: Record<OciRuntimeName, string> = { crun: '/run/crun', runc: '/run/runc' }

let cached: { key: string; result: Promise<OciRuntimeChoice> } | undefined
let attemptCounter = 0

/** Never rejects. Cached per process: the answer does not change while the host stays up. */
export function detectOciRuntime(opts: DetectOptions = {}): Promise<OciRuntimeChoice> {
  const { refresh, ...rest } = opts
  const key = JSON.stringify(rest)
  if (refresh !== true && cached?.key === key) return cached.result
  const result = probe(rest).catch(
    (err: unknown): OciRuntimeChoice => ({
      runtime: 'none',
      binary: null,
      wrapper: [],
      reason: `the runtime probe failed: ${err instanceof Error ? err.message : String(err)}`,
      tried: [],
      layout: null,
    }),
  )
  cached = { key, result }
  return result
}

/**
 * The argv prefix that runs a program in a private mount namespace with the cgroup2 mount removed, so crun
 * sees a pure v1 layout. The mount path is passed as $0, never spliced into the script.
 */
/** The shell of the hybrid wrapper: $0 the cgroup2 mount to drop, then the runtime's argv. */
export const HYBRID_SCRIPT = 'umount "$0" && exec "$@"'

export function hybridWrapper(unshare: string, v2Mount: string): string[] {
  return [unshare, '-m', '--propagation', 'private', '/bin/sh', '-c', HYBRID_SCRIPT, v2Mount]
}

/** The cgroup2 mount a hybrid wrapper removes, or undefined for any other wrapper. */
export function hybridV2Mount(wrapper: readonly string[]): string | undefined {
  const [, m, propagation, mode, sh, c, script, v2Mount] = wrapper
  const hybrid =
    wrapper.length === 8 &&
    m === '-m' &&
    propagation === '--propagation' &&
    mode === 'private' &&
    sh === '/bin/sh' &&
    c === '-c' &&
    script === HYBRID_SCRIPT
  return hybrid ? v2Mount : undefined
}

const NSFS_MAGIC = 0x6e736673

/**
 * One mount namespace without the cgroup2 mount for every new container's crun, instead of the hybrid
 * wrapper's `unshare -m`, `sh` and `umount` for each (docs/runtime.md, "The create path"): made once,
 * kept by a bind mount on `file` (which must not be on a shared mount), entered with `nsenter --mount`.
 * `slave`: namespaces named in /run/netns later (a shared mount) still reach it, and their removal too.
 * Host mounts made after it (on private mounts) do not: only the fresh path, whose configs name
 * namespaces by /proc/<pid>, runs crun in it.
 */
export async function makeCrunNamespace(file: string, v2Mount: string, unshare = 'unshare'): Promise<void> {
  await releaseCrunNamespace(file)
  await writeFile(file, '')
  const r = await runStatus(unshare, [`--mount=${file}`, '--propagation', 'slave', 'umount', v2Mount])
  if (r !== 0) {
    await releaseCrunNamespace(file)
    throw new Error(`unshare --mount=${file} exited with ${r}`)
  }
}

/** Unmounts and removes a namespace file of makeCrunNamespace; nothing when there is none. */
export async function releaseCrunNamespace(file: string): Promise<void> {
  const type = await statfs(file).then(
    (st) => st.type,
    () => null,
  )
  if (type === null) return
  if (type === NSFS_MAGIC) await runStatus('umount', [file])
  await rm(file, { force: true })
}

function runStatus(file: string, args: string[]): Promise<number | null> {
  return new Promise((resolve) => {
    const child = spawn(file, args, { stdio: 'ignore' })
    child.once('error', () => resolve(null))
    child.once('exit', (code) => resolve(code))
  })
}

interface Candidate {
  runtime: OciRuntimeName
  binary: string
  wrapper: string[]
  how: string
}

async function probe(opts: DetectOptions): Promise<OciRuntimeChoice> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS
  const mountsText = opts.mountsText ?? (await readFile('/proc/mounts', 'utf8').catch(() => ''))
  const info = detectCgroupLayout(mountsText)
  const layout = info.mounted ? info.layout : null
  if (process.geteuid?.() !== 0)
    return { runtime: 'none', binary: null, wrapper: [], reason: 'needs root', tried: [], layout }
  const crun = opts.crun === undefined ? await findExecutable('crun') : opts.crun
  const runc = opts.runc === undefined ? await findExecutable('runc') : opts.runc
  const unshare = await findExecutable('unshare')
  const tried: OciRuntimeAttempt[] = []
  const candidates: Candidate[] = []
  if (crun === null) tried.push({ how: 'crun run', ok: false, error: 'crun not found', ms: 0 })
  else {
    candidates.push({ runtime: 'crun', binary: crun, wrapper: [], how: 'crun run' })
    if (info.layout === 'hybrid' && info.v2Mount !== null) {
      const how = `crun run in a private mount namespace without ${info.v2Mount}`
      if (unshare === null) tried.push({ how, ok: false, error: 'unshare (util-linux) not found', ms: 0 })
      else
        candidates.push({ runtime: 'crun', binary: crun, wrapper: hybridWrapper(unshare, info.v2Mount), how })
    }
  }
  if (runc === null) tried.push({ how: 'runc run', ok: false, error: 'runc not found', ms: 0 })
  else candidates.push({ runtime: 'runc', binary: runc, wrapper: [], how: 'runc run' })

  const bundle = await mkdtemp(join(tmpdir(), PROBE_PREFIX))
  const ids: Array<{ id: string; candidate: Candidate }> = []
  try {
    await writeProbeFiles(bundle)
    for (const candidate of candidates) {
      const id = `${PROBE_PREFIX}${process.pid}-${++attemptCounter}`
      ids.push({ id, candidate })
      const attempt = await tryCandidate(candidate, bundle, id, timeoutMs)
      tried.push(attempt)
      if (attempt.ok) return { ...chosen(candidate, tried, info.v2Mount), layout }
    }
  } finally {
    for (const { id, candidate } of ids) await removeContainer(candidate, id, timeoutMs)
    await rm(bundle, { recursive: true, force: true })
    const ours = new Set(ids.map(({ id }) => id))
    await removeProbeCgroups(opts.cgroupRoot ?? CGROUP_ROOT, (name) => ours.has(name) || isStaleProbe(name))
  }
  const reasons = tried.map((t) => `${t.how}: ${t.error ?? 'failed'}`).join('; ')
  return {
    runtime: 'none',
    binary: null,
    wrapper: [],
    reason:
      tried.length === 0 ? 'no OCI runtime to try' : `no OCI runtime could run a container (${reasons})`,
    tried: tried.sort((a, b) => order(a.how) - order(b.how)),
    layout,
  }
}

// Attempts recorded as "not found" were pushed early; report them in the order they would have run.
function order(how: string): number {
  if (how.startsWith('crun run in')) return 1
  return how.startsWith('crun') ? 0 : 2
}

function chosen(
  candidate: Candidate,
  tried: OciRuntimeAttempt[],
  v2Mount: string | null,
): Omit<OciRuntimeChoice, 'layout'> {
  const base = { runtime: candidate.runtime, binary: candidate.binary, wrapper: candidate.wrapper }
  const sorted = tried.sort((a, b) => order(a.how) - order(b.how))
  if (candidate.wrapper.length > 0)
    return {
      ...base,
      reason: `crun (in a private mount namespace without the cgroup2 mount ${v2Mount}: hybrid layout)`,
      tried: sorted,
    }
  if (candidate.runtime === 'crun') return { ...base, reason: 'crun (runs as it is)', tried: sorted }
  const crunError = sorted.find((t) => t.how === 'crun run')?.error ?? 'not tried'
  return { ...base, reason: `runc (crun refused: ${crunError})`, tried: sorted }
}

async function writeProbeFiles(bundle: string): Promise<void> {
  await prepareRootfs(join(bundle, 'rootfs'))
  await Promise.all([
    writeFile(join(bundle, 'hosts'), renderHosts('km1s-probe')),
    writeFile(join(bundle, 'hostname'), renderHostname('km1s-probe')),
    writeFile(join(bundle, 'resolv.conf'), renderResolvConf({ nameservers: ['127.0.0.1'] })),
  ])
}

async function tryCandidate(
  candidate: Candidate,
  bundle: string,
  id: string,
  timeoutMs: number,
): Promise<OciRuntimeAttempt> {
  const started = performance.now()
  const config = ociConfig({
    container: 'km1s-probe',
    process: 'true',
    args: ['/bin/true'],
    rootfs: join(bundle, 'rootfs'),
    hostname: 'km1s-probe',
    limits: { memoryBytes: 16 * 1024 * 1024, pids: 16, cpuMillicores: 100 },
    systemPaths: presentSystemPaths(),
    files: {
      hosts: join(bundle, 'hosts'),
      hostname: join(bundle, 'hostname'),
      resolvConf: join(bundle, 'resolv.conf'),
    },
    namespaces: { network: 'new', uts: 'new', ipc: 'new' },
    cgroupsPath: `/${id}`,
  })
  await writeFile(join(bundle, 'config.json'), JSON.stringify(config))
  const argv = [...candidate.wrapper, candidate.binary, 'run', '--bundle', bundle, id]
  const result = await runQuiet(argv, join(bundle, `${id}.stderr`), timeoutMs)
  const ms = Math.round(performance.now() - started)
  if (result.code === 0) return { how: candidate.how, ok: true, ms }
  return { how: candidate.how, ok: false, error: result.error, ms }
}

/**
 * Runs argv with stdin and stdout ignored and stderr to a file: a container inherits the runtime's stdio,
 * and a pipe held by a stray process would never reach EOF (PLATFORM.md). Waits for exit, not for close.
 */
async function runQuiet(
  argv: readonly string[],
  stderrPath: string,
  timeoutMs: number,
): Promise<{ code: number | null; error: string }> {
  const [file, ...args] = argv
  if (file === undefined) return { code: null, error: 'nothing to run' }
  const fd = openSync(stderrPath, 'w')
  const outcome = await new Promise<{ code: number | null; error?: string }>((resolve) => {
    let child: ReturnType<typeof spawn>
    try {
      child = spawn(file, args, { stdio: ['ignore', 'ignore', fd] })
    } catch (err) {
      resolve({ code: null, error: (err as NodeJS.ErrnoException).code ?? String(err) })
      return
    }
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      resolve({ code: null, error: `timed out after ${timeoutMs} ms` })
    }, timeoutMs)
    child.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer)
      resolve({ code: null, error: err.code ?? err.message })
    })
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      resolve(code === null ? { code, error: `killed by ${signal}` } : { code })
    })
  })
  closeSync(fd)
  if (outcome.code === 0) return { code: 0, error: '' }
  const stderr = await readFile(stderrPath, 'utf8').catch(() => '')
  const line = stderr
    .split('\n')
    .map((l) => l.trim())
    .find((l) => l !== '')
  return { code: outcome.code, error: outcome.error ?? line ?? `exit status ${outcome.code}` }
}

/** `delete -f` through the same wrapper (crun would refuse the hybrid layout again), then its state dir. */
async function removeContainer(candidate: Candidate, id: string, timeoutMs: number): Promise<void> {
  const stateDir = STATE_DIRS[candidate.runtime]
  const exists = await readdir(stateDir).then(
    (names) => names.includes(id),
    () => false,
  )
  if (!exists) return
  await runQuiet([...candidate.wrapper, candidate.binary, 'delete', '-f', id], '/dev/null', timeoutMs)
  await rm(join(stateDir, id), { recursive: true, force: true })
}

/** A probe cgroup of a process that is gone (killed mid-probe): nothing else will ever remove it. */
export function isStaleProbe(name: string, isAlive: (pid: number) => boolean = processAlive): boolean {
  const match = /^km1s-probe-(\d+)-\d+$/.exec(name)
  return match !== null && Number(match[1]) !== process.pid && !isAlive(Number(match[1]))
}

/**
 * Removes the cgroups whose name `wanted` accepts in every hierarchy (each v1 controller and cgroup2),
 * killing anything still inside: a runtime killed by the timeout leaves them behind. Returns what stayed.
 */
export async function removeProbeCgroups(
  cgroupRoot: string,
  wanted: (name: string) => boolean,
): Promise<string[]> {
  const hierarchies = await readdir(cgroupRoot, { withFileTypes: true }).catch(() => [])
  const dirs = [
    ...(await listProbeDirs(cgroupRoot, wanted)),
    ...(
      await Promise.all(
        hierarchies
          .filter((e) => e.isDirectory())
          .map((e) => listProbeDirs(join(cgroupRoot, e.name), wanted)),
      )
    ).flat(),
  ]
  const left: string[] = []
  for (const dir of dirs) if (!(await removeCgroup(dir))) left.push(dir)
  return left
}

async function listProbeDirs(parent: string, wanted: (name: string) => boolean): Promise<string[]> {
  const entries = await readdir(parent, { withFileTypes: true }).catch(() => [])
  return entries.filter((e) => e.isDirectory() && wanted(e.name)).map((e) => join(parent, e.name))
}

async function removeCgroup(dir: string): Promise<boolean> {
  for (let i = 0; i < 20; i++) {
    try {
      await rmdir(dir)
      return true
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'ENOENT') return true
      if (code !== 'EBUSY') return false
      const procs = await readFile(join(dir, 'cgroup.procs'), 'utf8').catch(() => '')
      for (const pid of procs.split('\n').filter((p) => p !== '')) {
        try {
          process.kill(Number(pid), 'SIGKILL')
        } catch {
          // already gone
        }
      }
      await new Promise((r) => setTimeout(r, 10))
    }
  }
  return false
}
