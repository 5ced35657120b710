// The container runtime of one node: makes containers, supervises their processes through shims, adopts
// them after an agent restart and sweeps everything of this node that nothing wants. One class for both
// kinds: `oci` (crun/runc: namespaces, read-only root, cgroup limits) and `process` (plain processes,
// nothing isolated: for hosts without root or without an OCI runtime). docs/runtime.md has the picture.
import { execFile } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { mkdir, open, readdir, readFile, rm, stat, unlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { errorMessage, Km1sError } from '../common/errors.ts'
import { writeFileAtomic } from '../common/files.ts'
import type { Logger } from '../common/logger.ts'
import { processAlive } from '../common/process.ts'
import * as z from '../common/schema.ts'
import {
  allocateAddress,
  attachContainer,
  bridgeAddress,
  detachContainer,
  ensureBridge,
  formatIPv4,
  isContainerAddress,
  listContainerNetns,
  listKm1sVeths,
  netnsName,
  parseIPv4,
  parseSubnet,
  planFreshAttach,
  vethName,
} from '../network/container-net.ts'
import { Cgroups } from './cgroups.ts'
import { hybridV2Mount, makeCrunNamespace, type OciRuntimeChoice, releaseCrunNamespace } from './detect.ts'
import {
  BACKOFF_RESET_AFTER_MS,
  backoffDelay,
  classifyExit,
  type ExecutableProblem,
  executableProblem,
  type FileFacts,
  shouldRestart,
} from './exit.ts'
import { prepareRootfs, presentSystemPaths } from './host.ts'
import { makeFifo, ProcessLog, readLogs } from './logs.ts'
import { type RuntimeNames, SHIMS_CGROUP } from './names.ts'
import {
  DEFAULT_GID,
  DEFAULT_PATH_ENV,
  DEFAULT_UID,
  ociConfig,
  renderHostname,
  renderHosts,
  renderResolvConf,
  withStartGate,
} from './oci.ts'
import {
  type ForkedPause,
  GATE_FD,
  type PauseNetwork,
  type PauseRequest,
  pauseEnv,
  pauseFile,
  type SpawnedPause,
  spawnPause,
} from './pause.ts'
import { gatedCommand, shimFile, spawnShim, waitForPidFile } from './shim.ts'
import {
  ContainerSpec,
  type ContainerSpecInput,
  type ContainerStatus,
  type ExecRequest,
  type ExitInfo,
  type LogEntry,
  type LogQuery,
  type PreparedExec,
  type ProcessSpec,
  type ProcessStatus,
  type Runtime,
} from './types.ts'

const run = promisify(execFile)

export interface ContainerRuntimeInit {
  kind: 'oci' | 'process'
  names: RuntimeNames
  log: Logger
  /** For `oci`: the runtime found by detectOciRuntime. */
  oci?: OciRuntimeChoice
  /** This node's container subnet (oci only); 10.42.0.0/24 until the network issue assigns one. */
  subnet?: string
  /** Run the container network's host side in this named namespace instead of the current one (tests). */
  hostNetns?: string
  /** How often adopted shims (not children of this agent) are checked for exit. */
  adoptPollMs?: number
}

/** What is kept on disk per wanted container. */
const ContainerRecord = z.object({
  spec: ContainerSpec,
  ip: z.nullable(z.string()),
  createdAt: z.string(),
})
type ContainerRecord = z.output<typeof ContainerRecord>

const CATATONIT = '/usr/bin/catatonit'
const PAUSE_LIMITS = { memoryBytes: 16 * 1024 * 1024, pids: 8 }
/**
 * The shims and `crun run` processes of one container: a pids limit only. They stay outside memory
 * accounting of their own (cgroups.ts, HierarchyChoice), so `memoryBytes` is not applied.
 */
const SHIM_LIMITS = { memoryBytes: 512 * 1024 * 1024, pids: 4096 }
const SHIM_HIERARCHIES = { memory: false }
const START_WAIT_MS = 5_000
/** In the run directory; `_` first: the sweep takes no name that starts with it for a container's. */
const CRUN_NS_FILE = '_crun.mnt'

interface Proc {
  container: string
  spec: ProcessSpec
  state: ProcessStatus['state']
  pid: number | null
  shimPid: number | null
  restarts: number
  failures: number
  lastExit: ExitInfo | null
  nextStartAt: number | null
  startedAt: number
  oomBaseline: number
  /** Its cgroup (and the container's shim cgroup) exist with the limits. */
  cgroupReady: boolean
  stopping: boolean
  timer: NodeJS.Timeout | undefined
  log: ProcessLog
  /** Resolves when the current shim has ended. */
  ended: Promise<void> | undefined
  /** The start in progress, if any. */
  starting: Promise<void> | undefined
  /** Its FIFOs exist and the log reads them (after the pause's `ns` stage). */
  io: Promise<void>
  /** Resolves when the end of the current shim has been recorded (#onShimEnded). */
  handled: Promise<void>
}

interface Ctr {
  record: ContainerRecord
  state: 'creating' | 'running' | 'removing' | 'failed'
  error: string | null
  procs: Map<string, Proc>
  pausePid: number | null
  /** The pause holds the namespaces (its `ns` stage, or the fallback's): processes may join them. */
  pauseReady: Promise<void>
  /** The network is made; rejects when the pause ended between its stages. */
  network: Promise<void>
  /** While the network is being made: the lock and the file a process's start gate waits for. */
  netGate: { held: string; fifo: string; ready: string } | undefined
  /** A gated shim was let go without running: the pause it was made for gave way to the fallback. */
  stranded: boolean
  /** Being created (not adopted): its processes' first starts take the gated path. */
  fresh: boolean
  /** Resolves once the first gated shim is spawned (or will not be): the pause is spawned next. */
  shimSpawned: Promise<void>
  shimSpawnedNow: () => void
  /** A new container's pause, for the first gated shim to fork (taken by it). */
  pauseRequest: Promise<PauseRequest | undefined> | undefined
  /** The pause the first gated shim forked, for #makeContainer to follow (taken by it). */
  forkedPause: ForkedPause | undefined
  /** The container's shim cgroup exists with its limits. */
  shimCgroup: Promise<void>
  /** Everything but the network and the processes: files, cgroups, roots, the pause spawned. */
  prepared: Promise<void>
  /** Its pause is spawned (#prepareContainer). */
  made: Promise<void>
  /** Its hostname, hosts and resolv.conf are written. */
  files: Promise<void>
  /** Aborted when the container is removed: ends its log followers. */
  removed: AbortController
}

export class ContainerRuntime implements Runtime {
  readonly kind: 'oci' | 'process'
  readonly #init: ContainerRuntimeInit
  readonly #names: RuntimeNames
  readonly #log: Logger
  readonly #cgroups: Cgroups | undefined
  readonly #containers = new Map<string, Ctr>()
  /** Serialises create/remove per container name. */
  readonly #locks = new Map<string, Promise<unknown>>()
  readonly #listeners = new Set<(status: ContainerStatus) => void>()
  #started = false
  #stopped = false

  constructor(init: ContainerRuntimeInit) {
    this.kind = init.kind
    this.#init = init
    this.#names = init.names
    this.#log = init.log.child({ subsystem: 'runtime' })
    if (init.kind === 'oci') {
      if (init.oci === undefined || init.oci.binary === null) {
        throw new Km1sError('ERR_NO_OCI_RUNTIME', 'No working OCI runtime was found; run `km1s doctor`.')
      }
      this.#cgroups = new Cgroups({ log: this.#log })
    }
  }

  #subnetOverride: string | undefined

  get #subnet(): string {
    return this.#subnetOverride ?? this.#init.subnet ?? '10.42.0.0/24'
  }

  async setSubnet(cidr: string): Promise<void> {
    const previous = this.#subnet
    this.#subnetOverride = cidr
    if (this.kind !== 'oci' || cidr === previous || !this.#started) return
    await ensureBridge({ subnet: cidr, hostNetns: this.#init.hostNetns, log: this.#log })
    for (const name of [...this.#containers.keys()]) {
      await this.#withLock(name, () => this.#readdress(name, previous)).catch((err: unknown) => {
        this.#log.error(
          { container: name, err: errorMessage(err) },
          'moving a container to the new subnet failed',
        )
      })
    }
  }

  /** Records of another subnet (the node moved while the agent was down) get an address of this one. */
  async #readdressRecords(records: ContainerRecord[]): Promise<void> {
    const subnet = this.#subnet
    const used = new Set<string>()
    for (const r of records) if (r.ip !== null && isContainerAddress(subnet, r.ip)) used.add(r.ip)
    for (const [i, r] of records.entries()) {
      if (r.ip === null || isContainerAddress(subnet, r.ip)) continue
      const ip = allocateAddress(
        subnet,
        used,
        formatIPv4(parseSubnet(subnet).base + ((parseIPv4(r.ip) ?? 0) & 255)),
      )
      used.add(ip)
      this.#log.info({ container: r.spec.name, from: r.ip, to: ip }, 'container moved to the new subnet')
      records[i] = { ...r, ip }
      await writeFileAtomic(this.#names.specFile(r.spec.name), JSON.stringify(records[i]))
    }
  }

  /** Gives a container an address of the current subnet, the same host part when free. */
  async #readdress(name: string, previous: string): Promise<void> {
    const ctr = this.#containers.get(name)
    if (!ctr || ctr.state === 'removing' || ctr.record.ip === null) return
    const subnet = this.#subnet
    const old = ctr.record.ip
    const used = new Set(
      [...this.#containers.values()]
        .filter((c) => c !== ctr)
        .map((c) => c.record.ip)
        .filter((ip) => ip !== null),
    )
    const offset = (parseIPv4(old) ?? 0) - (parseSubnet(previous).base ?? 0)
    const ip = allocateAddress(subnet, used, formatIPv4(parseSubnet(subnet).base + offset))
    ctr.record = { ...ctr.record, ip }
    await writeFileAtomic(this.#names.specFile(name), JSON.stringify(ctr.record))
    const { spec } = ctr.record
    const hostname = spec.hostname ?? spec.name
    const dir = this.#names.containerDir(name)
    // Written in place, not renamed: the containers see these files through bind mounts of the inode.
    await writeFile(join(dir, 'hosts'), renderHosts(hostname, [{ ip, names: [hostname] }]))
    await writeFile(
      join(dir, 'resolv.conf'),
      renderResolvConf({ nameservers: [bridgeAddress(subnet)], search: ['km1s.internal'] }),
    )
    await attachContainer({
      instance: this.#names.instance,
      container: name,
      subnet,
      ip,
      hostNetns: this.#init.hostNetns,
      log: this.#log,
    })
    this.#log.info({ container: name, from: old, to: ip }, 'container moved to the new subnet')
  }

  async start(): Promise<void> {
    if (this.#started) return
    this.#started = true
    const n = this.#names
    await mkdir(n.runDir, { recursive: true, mode: 0o700 })
    await mkdir(n.specDir, { recursive: true, mode: 0o700 })
    await mkdir(n.logDir, { recursive: true, mode: 0o700 })
    if (this.kind === 'process') {
      this.#log.warn(
        'the process runtime isolates nothing: containers run as plain processes of this host, with its files, network and users',
      )
    } else {
      await ensureBridge({ subnet: this.#subnet, hostNetns: this.#init.hostNetns })
    }
    const wanted = await this.#loadRecords()
    if (this.kind === 'oci') await this.#readdressRecords(wanted)
    await this.#sweep(new Set(wanted.map((r) => r.spec.name)))
    for (const record of wanted) {
      const ctr = newCtr(record)
      this.#containers.set(record.spec.name, ctr)
      await this.#withLock(record.spec.name, () => this.#bringUp(ctr, true))
    }
  }

  async stop(): Promise<void> {
    this.#stopped = true
    for (const ctr of this.#containers.values()) {
      for (const p of ctr.procs.values()) {
        clearTimeout(p.timer)
        await p.log.close()
      }
    }
  }

  onChange(listener: (status: ContainerStatus) => void): () => void {
    this.#listeners.add(listener)
    return () => this.#listeners.delete(listener)
  }

  /** Tells the listeners (the scheduler's status records) that a container or one of its processes changed. */
  #changed(ctr: Ctr | string | undefined): void {
    const c = typeof ctr === 'string' ? this.#containers.get(ctr) : ctr
    if (!c || this.#listeners.size === 0) return
    const status = this.#status(c)
    for (const listener of this.#listeners) {
      try {
        listener(status)
      } catch (err) {
        this.#log.warn({ err: errorMessage(err) }, 'a runtime change listener failed')
      }
    }
  }

  list(): ContainerStatus[] {
    return [...this.#containers.values()]
      .map((c) => this.#status(c))
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
  }

  get(name: string): ContainerStatus | undefined {
    const ctr = this.#containers.get(name)
    return ctr && this.#status(ctr)
  }

  async create(input: ContainerSpecInput): Promise<ContainerStatus> {
    const parsed = ContainerSpec.safeParse(input)
    if (!parsed.success) {
      const issue = parsed.error.issues[0]
      const field = issue === undefined || issue.path.length === 0 ? 'spec' : issue.path.join('.')
      throw new Km1sError(
        'ERR_INVALID',
        `Invalid container spec: ${field}: ${issue?.message ?? 'is invalid'}.`,
      )
    }
    const spec = parsed.data
    return this.#withLock(spec.name, async () => {
      if (this.#containers.has(spec.name)) {
        throw new Km1sError('ERR_EXISTS', `A container named ${spec.name} exists already; remove it first.`)
      }
      const used = new Set([...this.#containers.values()].map((c) => c.record.ip).filter((ip) => ip !== null))
      const ip = this.kind === 'oci' ? allocateAddress(this.#subnet, used) : null
      const record: ContainerRecord = { spec, ip, createdAt: new Date().toISOString() }
      // The record is on disk before the create returns, written while the container is made: an fsync on
      // an SD card takes tens of ms. A crash before the record exists leaves parts nobody wants, which the
      // next start sweeps (the caller saw no success); after, the next start adopts or finishes it.
      const ctr = newCtr(record)
      this.#containers.set(spec.name, ctr)
      // Its first steps queued before the record's: the fsync takes a threadpool thread for a while.
      const up = this.#bringUp(ctr, false)
      const durable = writeFileAtomic(this.#names.specFile(spec.name), JSON.stringify(record)).then(
        () => undefined,
        (err: unknown) => err,
      )
      await up
      const failed = await durable
      if (failed !== undefined) {
        await this.#teardown(ctr)
        throw new Km1sError(
          'ERR_DISK',
          `Cannot record container ${spec.name} on disk (${failed instanceof Error ? failed.message : String(failed)}); nothing was started.`,
        )
      }
      return this.#status(ctr)
    })
  }

  async remove(name: string): Promise<void> {
    await this.#withLock(name, async () => {
      const ctr = this.#containers.get(name)
      if (!ctr) throw new Km1sError('ERR_NOT_FOUND', `There is no container named ${name} on this node.`)
      await this.#teardown(ctr)
    })
  }

  /** Stops and removes everything of a container; its record first, so a crash meanwhile is swept. */
  async #teardown(ctr: Ctr): Promise<void> {
    const { name } = ctr.record.spec
    ctr.state = 'removing'
    ctr.removed.abort()
    await unlink(this.#names.specFile(name)).catch(() => {})
    await Promise.all([...ctr.procs.values()].map((p) => this.#stopProcess(p)))
    for (const p of ctr.procs.values()) await p.log.close()
    await this.#removeResources(name, ctr.pausePid)
    this.#containers.delete(name)
    // The instance's own cgroup goes with its last container: nothing of km1s stays without a container.
    if (this.#containers.size === 0) {
      await this.#cgroups?.remove(`/${this.#names.prefix}`)
      await this.#dropCrunNamespace()
    }
  }

  logs(name: string, query: LogQuery): AsyncIterable<LogEntry> {
    const ctr = this.#containers.get(name)
    if (!ctr) throw new Km1sError('ERR_NOT_FOUND', `There is no container named ${name} on this node.`)
    const processes = ctr.record.spec.processes.map((p) => p.name)
    if (query.process !== undefined && !processes.includes(query.process)) {
      throw new Km1sError(
        'ERR_NOT_FOUND',
        `Container ${name} has no process ${query.process}; it has ${processes.join(', ')}.`,
      )
    }
    const signals = [ctr.removed.signal, ...(query.signal ? [query.signal] : [])]
    return readLogs(this.#names.containerLogDir(name), processes, {
      ...query,
      signal: AbortSignal.any(signals),
    })
  }

  async prepareExec(req: ExecRequest): Promise<PreparedExec> {
    const ctr = this.#containers.get(req.container)
    if (!ctr)
      throw new Km1sError('ERR_NOT_FOUND', `There is no container named ${req.container} on this node.`)
    const spec =
      req.process === undefined
        ? ctr.record.spec.processes[0]
        : ctr.record.spec.processes.find((p) => p.name === req.process)
    if (!spec) {
      throw new Km1sError('ERR_NOT_FOUND', `Container ${req.container} has no process ${req.process}.`)
    }
    const proc = ctr.procs.get(spec.name)
    if (proc?.state !== 'running') {
      throw new Km1sError(
        'ERR_NOT_RUNNING',
        `Process ${spec.name} of ${req.container} is not running, so there is nothing to exec into.`,
      )
    }
    const env = { ...spec.env, ...(req.env ?? {}) }
    if (this.kind === 'process') {
      return {
        argv: req.args,
        env: { PATH: DEFAULT_PATH_ENV, ...env },
        cwd: this.#processCwd(ctr, spec),
        pidFile: null,
        cleanup: async () => {},
      }
    }
    const oci = this.#oci()
    const dir = this.#names.processDir(req.container, spec.name)
    const token = `${process.pid}-${Date.now()}-${Math.floor(Math.random() * 1e6)}`
    const processFile = join(dir, `exec-${token}.json`)
    const pidFile = join(dir, `exec-${token}.pid`)
    const config = this.#config(ctr, spec)
    const envList = Object.entries(env).map(([k, v]) => `${k}=${v}`)
    if (!('PATH' in env)) envList.unshift(`PATH=${DEFAULT_PATH_ENV}`)
    await writeFile(
      processFile,
      JSON.stringify({ ...config.process, terminal: req.tty, args: req.args, env: envList }),
    )
    return {
      argv: [
        ...oci.wrapper,
        oci.binary as string,
        'exec',
        '--pid-file',
        pidFile,
        '--process',
        processFile,
        ...(req.tty ? ['-t'] : []),
        this.#names.ociId(req.container, spec.name),
      ],
      env: { PATH: DEFAULT_PATH_ENV },
      cwd: '/',
      pidFile,
      cleanup: async () => {
        await rm(processFile, { force: true })
        await rm(pidFile, { force: true })
      },
    }
  }

  // --- containers -------------------------------------------------------------------------------------

  #oci(): OciRuntimeChoice {
    return this.#init.oci as OciRuntimeChoice
  }

  // The mount namespace new containers' cruns run in on a hybrid host (detect.ts makeCrunNamespace): made
  // at the first create beside another container, released with the last container and by the sweep
  // when nothing is wanted; made and released one after the other.
  #crunNs: { file: string; ready: Promise<boolean> } | undefined
  #crunNsChain: Promise<unknown> = Promise.resolve()

  #useCrunNamespace(): Promise<string | undefined> {
    const v2Mount = this.kind === 'oci' ? hybridV2Mount(this.#oci().wrapper) : undefined
    if (v2Mount === undefined) return Promise.resolve(undefined)
    if (this.#crunNs === undefined) {
      const file = join(this.#names.runDir, CRUN_NS_FILE)
      const unshare = this.#oci().wrapper[0] ?? 'unshare'
      const ready = this.#crunNsChain
        .then(() => makeCrunNamespace(file, v2Mount, unshare))
        .then(
          () => true,
          (err: unknown) => {
            this.#log.warn(
              { err: errorMessage(err) },
              'no shared mount namespace for crun; each run makes its own',
            )
            return false
          },
        )
      this.#crunNs = { file, ready }
      this.#crunNsChain = ready
    }
    const { file, ready } = this.#crunNs
    return ready.then((ok) => (ok ? file : undefined))
  }

  /** With the last container: nothing of km1s stays without one. */
  #dropCrunNamespace(): Promise<void> {
    this.#crunNs = undefined
    const file = join(this.#names.runDir, CRUN_NS_FILE)
    const released = this.#crunNsChain.then(() => releaseCrunNamespace(file)).catch(() => {})
    this.#crunNsChain = released
    return released
  }

  async #withLock<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const before = this.#locks.get(name) ?? Promise.resolve()
    const next = before.then(fn, fn)
    const settled = next.catch(() => {})
    this.#locks.set(name, settled)
    try {
      return await next
    } finally {
      if (this.#locks.get(name) === settled) this.#locks.delete(name)
    }
  }

  async #loadRecords(): Promise<ContainerRecord[]> {
    const files = await readdir(this.#names.specDir).catch(() => [] as string[])
    const records: ContainerRecord[] = []
    for (const file of files) {
      if (!file.endsWith('.json')) continue
      const path = join(this.#names.specDir, file)
      try {
        const parsed = ContainerRecord.safeParse(JSON.parse(await readFile(path, 'utf8')))
        if (parsed.success && `${parsed.data.spec.name}.json` === file) {
          records.push(parsed.data)
          continue
        }
      } catch {
        // unreadable: same as invalid
      }
      this.#log.warn({ file: path }, 'ignoring an unreadable container record; the container will be removed')
      await rm(path, { force: true })
    }
    return records
  }

  /**
   * Makes (or, when adopting, checks and repairs) everything a container needs, then its processes. For a
   * new container the processes start as soon as the pause process holds the namespaces, while it still
   * makes the network; their start gate holds each program back until the network is there (pause.ts).
   */
  async #bringUp(ctr: Ctr, adopting: boolean): Promise<void> {
    const { spec } = ctr.record
    const t0 = performance.now()
    const logDir = this.#names.containerLogDir(spec.name)
    // The container (files, network, pause) and each process's directory, cgroup and log are independent:
    // made at the same time, they cost the slowest of them rather than the sum (docs/benchmarks.md).
    const fifos = spec.processes.flatMap((ps) => {
      const dir = this.#names.processDir(spec.name, ps.name)
      return [shimFile(dir, 'stdout'), shimFile(dir, 'stderr')]
    })
    ctr.fresh = !adopting && this.kind === 'oci' && ctr.record.ip !== null
    // Its shim's move into its cgroup waits for the kernel unless another move went just before (cgroups.ts).
    if (ctr.fresh) this.#cgroups?.warmMoves()
    const spawned = Promise.withResolvers<void>()
    ctr.shimSpawned = spawned.promise
    ctr.shimSpawnedNow = () => spawned.resolve()
    if (!ctr.fresh) spawned.resolve()
    if (ctr.fresh && ctr.record.ip !== null) {
      const request = this.#pauseRequest(spec.name, spec.hostname ?? spec.name, fifos, ctr.record.ip)
      ctr.pauseRequest = request.catch(() => undefined)
    }
    if (this.#cgroups)
      ctr.shimCgroup = this.#cgroups.ensure(this.#names.shimCgroup(spec.name), SHIM_LIMITS, SHIM_HIERARCHIES)
    ctr.shimCgroup.catch(() => {})
    try {
      await Promise.all([
        mkdir(logDir, { recursive: true, mode: 0o700 }),
        ...spec.processes.map((ps) =>
          mkdir(this.#names.processDir(spec.name, ps.name), { recursive: true, mode: 0o700 }),
        ),
      ])
    } catch (err) {
      this.#failed(ctr, err)
      return
    }
    ctr.made = this.#prepareContainer(ctr, fifos, !adopting)
    ctr.made.catch(() => {})
    const prepared = Promise.all([
      ctr.made.then(() => ctr.files),
      ctr.shimCgroup,
      ...spec.processes.map((ps) => this.#prepareProcess(ctr, ps, logDir)),
    ]).then(() => undefined)
    ctr.prepared = prepared
    prepared.catch(() => {})
    // A new container's processes start at once: each waits inside for what it needs (#startProcessNow).
    const starts = adopting
      ? prepared.then(() =>
          Promise.all(
            [...ctr.procs.values()].map(async (proc) => {
              await proc.io
              if (!(await this.#adopt(proc))) await this.#startProcess(proc)
            }),
          ),
        )
      : Promise.all([...ctr.procs.values()].map((proc) => this.#startProcess(proc)))
    // Observed below, after the preparation: a start that fails meanwhile must not count as unhandled.
    starts.catch(() => {})
    // Decided: the first starts above are gated; any later one (a restart, the repair) is not. A start
    // that returned before its spawn must not leave the pause waiting for it.
    ctr.fresh = false
    starts.finally(ctr.shimSpawnedNow).catch(() => {})
    try {
      await prepared
    } catch (err) {
      await starts.catch(() => {})
      for (const proc of ctr.procs.values()) await this.#stopProcess(proc)
      this.#failed(ctr, err)
      return
    }
    const t1 = performance.now()
    const network = await ctr.network.then(
      () => undefined,
      (err: unknown) => err,
    )
    const started = await starts.then(
      () => undefined,
      (err: unknown) => err,
    )
    const problem =
      network ??
      started ??
      (ctr.stranded ? new Error('the pause process gave way to the fallback') : undefined)
    ctr.stranded = false
    if (problem !== undefined) {
      // The pause ended between its stages, or neither it nor the fallback could make the container: the
      // processes failed at their gate or never started. Once more the slow way, as after a restart.
      this.#log.warn(
        { container: spec.name, err: errorMessage(problem) },
        'making the container failed; repairing',
      )
      try {
        await this.#repair(ctr)
      } catch (err) {
        this.#failed(ctr, err)
        return
      }
    }
    ctr.state = 'running'
    this.#changed(ctr)
    this.#log.debug(
      { container: spec.name, prepareMs: Math.round(t1 - t0), startMs: Math.round(performance.now() - t1) },
      adopting ? 'container adopted' : 'container created',
    )
  }

  #failed(ctr: Ctr, err: unknown): void {
    ctr.state = 'failed'
    ctr.error = `the container could not be made: ${errorMessage(err)}`
    this.#log.error({ container: ctr.record.spec.name, err: ctr.error }, 'container failed')
    this.#changed(ctr)
  }

  /** Stops what a failed fast path started, makes the network and a pause the slow way, starts again. */
  async #repair(ctr: Ctr): Promise<void> {
    const { spec, ip } = ctr.record
    for (const proc of ctr.procs.values()) {
      await this.#stopProcess(proc)
      await proc.handled.catch(() => {})
      Object.assign(proc, { stopping: false, state: 'starting', lastExit: null, restarts: 0, failures: 0 })
    }
    ctr.netGate = undefined
    if (ctr.pausePid !== null && processAlive(ctr.pausePid)) killQuietly(ctr.pausePid, 'SIGKILL')
    ctr.pausePid = null
    const hostname = spec.hostname ?? spec.name
    if (ip !== null) await this.#attach(spec.name, ip)
    const fifos = [...ctr.procs.values()].flatMap((p) => {
      const dir = this.#names.processDir(spec.name, p.spec.name)
      return [shimFile(dir, 'stdout'), shimFile(dir, 'stderr')]
    })
    const pause = await this.#ensurePause(spec.name, hostname, fifos)
    ctr.pausePid = pause.pid
    ctr.pauseReady = pause.ready
    ctr.network = pause.ready
    await pause.ready
    for (const proc of ctr.procs.values()) {
      proc.io = this.#attachLogs(proc)
      await proc.io
    }
    await Promise.all([...ctr.procs.values()].map((proc) => this.#startProcess(proc)))
  }

  async #attach(container: string, ip: string): Promise<void> {
    await attachContainer({
      instance: this.#names.instance,
      container,
      subnet: this.#subnet,
      ip,
      hostNetns: this.#init.hostNetns,
      log: this.#log,
    })
  }

  /** Its directory, cgroup and root now; its FIFOs and log once the pause made them (`proc.io`). */
  async #prepareProcess(ctr: Ctr, ps: ProcessSpec, logDir: string): Promise<void> {
    const proc: Proc = {
      container: ctr.record.spec.name,
      spec: ps,
      state: 'starting',
      pid: null,
      shimPid: null,
      restarts: 0,
      failures: 0,
      lastExit: null,
      nextStartAt: null,
      startedAt: Date.now(),
      oomBaseline: 0,
      cgroupReady: false,
      stopping: false,
      timer: undefined,
      log: new ProcessLog({ dir: logDir, process: ps.name, log: this.#log }),
      ended: undefined,
      starting: undefined,
      io: Promise.resolve(),
      handled: Promise.resolve(),
    }
    ctr.procs.set(ps.name, proc)
    proc.io = this.#attachLogs(proc)
    proc.io.catch(() => {})
    const dir = this.#names.processDir(ctr.record.spec.name, ps.name)
    if (this.#cgroups && this.kind === 'oci') {
      await Promise.all([
        this.#cgroups.ensure(this.#names.processCgroup(ctr.record.spec.name, ps.name), ps.limits),
        prepareRootfs(join(dir, 'rootfs')),
      ])
      proc.cgroupReady = true
    }
  }

  async #attachLogs(proc: Proc): Promise<void> {
    const ctr = this.#containers.get(proc.container)
    await ctr?.pauseReady
    const dir = this.#names.processDir(proc.container, proc.spec.name)
    await Promise.all([makeFifo(shimFile(dir, 'stdout')), makeFifo(shimFile(dir, 'stderr'))])
    proc.log.attach('stdout', shimFile(dir, 'stdout'))
    proc.log.attach('stderr', shimFile(dir, 'stderr'))
  }

  /**
   * The container's files and its pause process. Resolves once the pause is spawned (its pid is known);
   * `ctr.pauseReady` and `ctr.network` tell when it holds the namespaces and when the network is made.
   */
  #prepareContainer(ctr: Ctr, fifos: string[], fresh: boolean): Promise<void> {
    // Set before anything is awaited: the processes' preparation waits on them from the start.
    const ready = Promise.withResolvers<void>()
    const network = Promise.withResolvers<void>()
    ctr.pauseReady = ready.promise
    ctr.network = network.promise
    ready.promise.catch(() => {})
    network.promise.catch(() => {})
    const made = this.#makeContainer(ctr, fifos, fresh)
    made.then(
      (stages) => {
        stages.ready.then(ready.resolve, ready.reject)
        stages.network.then(network.resolve, network.reject)
      },
      (err: unknown) => {
        ready.reject(err)
        network.reject(err)
      },
    )
    return made.then(() => undefined)
  }

  async #makeContainer(
    ctr: Ctr,
    fifos: string[],
    fresh: boolean,
  ): Promise<{ ready: Promise<void>; network: Promise<void> }> {
    const { spec, ip } = ctr.record
    const dir = this.#names.containerDir(spec.name)
    if (fresh && ip !== null && this.kind === 'oci') {
      // Its directory exists (the processes' directories are in it). The pause is spawned right after
      // the first shim: with twenty creates at once, each container's two spawns then come together
      // instead of twenty shims first, and the shim's chain, the longer, starts first.
      await ctr.shimSpawned
    } else {
      await mkdir(dir, { recursive: true, mode: 0o711 })
    }
    if (this.kind === 'process') return { ready: Promise.resolve(), network: Promise.resolve() }
    const hostname = spec.hostname ?? spec.name
    // Awaited with the rest of the preparation (ctr.prepared): the pause need not wait for them.
    const files = Promise.all([
      writeFile(join(dir, 'hostname'), renderHostname(hostname)),
      writeFile(join(dir, 'hosts'), renderHosts(hostname, ip === null ? [] : [{ ip, names: [hostname] }])),
      writeFile(
        join(dir, 'resolv.conf'),
        renderResolvConf({ nameservers: [bridgeAddress(this.#subnet)], search: ['km1s.internal'] }),
      ),
    ]).then(() => undefined)
    ctr.files = files
    files.catch(() => {})
    if (fresh && ip !== null) {
      // The fast path: the pause process makes the namespace and runs attachContainer's own plan in one
      // spawn, telling its stages on a pipe. Should it fail before the namespaces are there,
      // attachContainer observes and repairs, and a pause that only holds UTS and IPC is made as after a
      // restart; should it fail after, #bringUp repairs.
      let first = -1
      const fallback = async (err: unknown) => {
        this.#log.warn(
          { container: spec.name, err: errorMessage(err) },
          'making the network at once failed; repairing',
        )
        ctr.netGate = undefined
        // Given up on (it did not start in time): it must not finish later and claim pause.pid.
        if (first > 0 && (isPauseOf(first, this.#names.pauseCgroup(spec.name)) || isArgvOf(first, dir)))
          killQuietly(first, 'SIGKILL')
        await this.#attach(spec.name, ip)
        const pause = await this.#ensurePause(spec.name, hostname, fifos)
        ctr.pausePid = pause.pid
        await pause.ready
      }
      let pause: SpawnedPause
      try {
        const forked = ctr.forkedPause
        ctr.forkedPause = undefined
        ctr.pauseRequest = undefined
        pause =
          forked !== undefined
            ? await this.#followPause(spec.name, forked)
            : await this.#ensurePause(spec.name, hostname, fifos, ip)
        first = pause.pid
      } catch (err) {
        const failed = Promise.reject(err)
        failed.catch(() => {})
        pause = { pid: -1, ready: failed, network: failed, cgroupsReady: () => {} }
      }
      ctr.pausePid = pause.pid > 0 ? pause.pid : null
      ctr.netGate = {
        held: `/proc/${pause.pid}/fd/${GATE_FD}`,
        fifo: pauseFile(dir, 'gate'),
        ready: pauseFile(dir, 'ready'),
      }
      const ready = pause.ready.catch(fallback)
      const network = pause.ready.then(
        () => pause.network,
        () => ready,
      )
      network.then(
        () => {
          ctr.netGate = undefined
        },
        () => {},
      )
      return { ready, network }
    }
    if (ip !== null) await this.#attach(spec.name, ip)
    const pause = await this.#ensurePause(spec.name, hostname, fifos)
    ctr.pausePid = pause.pid
    return { ready: pause.ready, network: pause.ready }
  }

  /**
   * The pause process holds the container's UTS (with its hostname) and IPC namespaces. With `ip` (a new
   * container) it also makes the network namespace and the container's network in the same spawn;
   * without, it is not in the network namespace at all — processes join that by its path. Resolves once
   * it is spawned: a pause that is there already is kept.
   */
  async #ensurePause(
    container: string,
    hostname: string,
    fifos: string[] = [],
    ip?: string,
  ): Promise<SpawnedPause> {
    const dir = this.#names.containerDir(container)
    const pidFile = pauseFile(dir, 'pid')
    const cgroup = this.#names.pauseCgroup(container)
    if (ip === undefined) {
      const known = await readPid(pidFile)
      if (known !== null && isPauseOf(known, cgroup)) {
        return { pid: known, ready: Promise.resolve(), network: Promise.resolve(), cgroupsReady: () => {} }
      }
      await rm(pidFile, { force: true })
    }
    // It also makes the processes' FIFOs: one `mkfifo` from this small shell instead of one spawn each from
    // the agent, whose fork costs milliseconds (docs/benchmarks.md). The same for the network.
    const pause = spawnPause(await this.#pauseRequest(container, hostname, fifos, ip))
    const cgroups = this.#cgroups as Cgroups
    // Its cgroup while it starts: it moves itself in once told (pause.ts).
    cgroups.ensure(cgroup, PAUSE_LIMITS).then(pause.cgroupsReady, (err: unknown) => {
      this.#log.warn({ container, err: errorMessage(err) }, 'the pause process has no cgroup')
      killQuietly(pause.pid, 'SIGKILL')
    })
    const timeout = startTimeout()
    return {
      pid: pause.pid,
      ready: Promise.race([pause.ready, timeout]),
      network: Promise.race([pause.network, timeout]),
      cgroupsReady: () => {},
    }
  }

  /** A pause forked by the first shim: as #ensurePause's, once its pid is known (with `ns`). */
  async #followPause(container: string, pause: ForkedPause): Promise<SpawnedPause> {
    const cgroups = this.#cgroups as Cgroups
    cgroups
      .ensure(this.#names.pauseCgroup(container), PAUSE_LIMITS)
      .then(pause.cgroupsReady, (err: unknown) => {
        this.#log.warn({ container, err: errorMessage(err) }, 'the pause process has no cgroup')
        pause.pid.then((pid) => killQuietly(pid, 'SIGKILL')).catch(() => {})
      })
    const timeout = startTimeout()
    const pid = await Promise.race([pause.pid, timeout]).catch((err: unknown) => {
      // Given up on: should it still say who it is, it must not go on to make a network nobody wants.
      pause.pid.then((late) => killQuietly(late, 'SIGKILL')).catch(() => {})
      throw err
    })
    return {
      pid,
      ready: Promise.race([pause.ready, timeout]),
      network: Promise.race([pause.network, timeout]),
      cgroupsReady: () => {},
    }
  }

  /** What a pause is to do (pause.ts): with `ip`, a new container's network too. */
  async #pauseRequest(
    container: string,
    hostname: string,
    fifos: string[],
    ip?: string,
  ): Promise<PauseRequest> {
    const dir = this.#names.containerDir(container)
    const cgroup = this.#names.pauseCgroup(container)
    const dirs = await (this.#cgroups as Cgroups).limitDirs(cgroup)
    let network: PauseNetwork | undefined
    if (ip !== undefined) {
      const { netns, plan } = planFreshAttach({
        instance: this.#names.instance,
        container,
        subnet: this.#subnet,
        ip,
      })
      const hostNetns = this.#init.hostNetns
      network = {
        netns,
        hostNetnsPath: hostNetns ? `/run/netns/${hostNetns}` : `/proc/${process.pid}/ns/net`,
        containerFirst: plan.containerFirst,
        host: plan.host,
        container: plan.container,
      }
    }
    return {
      dir,
      hostname,
      cgroupProcs: dirs.map((d) => join(d, 'cgroup.procs')),
      fifos,
      ...(network ? { network } : {}),
      path: DEFAULT_PATH_ENV,
    }
  }

  async #removeResources(name: string, pausePid: number | null): Promise<void> {
    if (pausePid !== null && processAlive(pausePid)) killQuietly(pausePid, 'SIGKILL')
    // The cgroups (with whatever still runs in them), the OCI state and the network are independent: they
    // go at the same time (a veth's deletion alone waits ~10 ms in the kernel). The directories go after,
    // once nothing is left to write into them.
    const cgroups = this.#cgroups
    const settled = await Promise.allSettled([
      cgroups &&
        Promise.all([
          cgroups.remove(this.#names.containerCgroup(name)),
          cgroups.remove(this.#names.shimCgroup(name)),
        ]),
      this.kind === 'oci'
        ? this.#deleteOciState((id) => this.#names.parseOciId(id)?.container === name).then(() =>
            detachContainer({
              instance: this.#names.instance,
              container: name,
              hostNetns: this.#init.hostNetns,
            }),
          )
        : this.#killRecordedProcesses(name),
    ])
    for (const r of settled) if (r.status === 'rejected') throw r.reason
    await rm(this.#names.containerDir(name), { recursive: true, force: true })
    await rm(this.#names.containerLogDir(name), { recursive: true, force: true })
  }

  /** Without cgroups (the process runtime as non-root) the pid files are all there is. */
  async #killRecordedProcesses(name: string): Promise<void> {
    const dir = this.#names.containerDir(name)
    const procs = await readdir(dir).catch(() => [] as string[])
    for (const p of procs) {
      const pdir = join(dir, p)
      const shim = await readPid(shimFile(pdir, 'shimPid'))
      const pid = await readPid(shimFile(pdir, 'pid'))
      if (pid !== null && shim !== null && isShimOf(shim, pdir)) killQuietly(pid, 'SIGKILL')
      if (shim !== null && isShimOf(shim, pdir)) killQuietly(shim, 'SIGKILL')
    }
  }

  async #deleteOciState(match: (id: string) => boolean): Promise<void> {
    const oci = this.#oci()
    const stateDir = oci.runtime === 'runc' ? '/run/runc' : '/run/crun'
    const ids = (await readdir(stateDir).catch(() => [] as string[])).filter(match)
    for (const id of ids) {
      await run(oci.wrapper[0] ?? (oci.binary as string), [
        ...oci.wrapper.slice(1),
        ...(oci.wrapper.length > 0 ? [oci.binary as string] : []),
        'delete',
        '-f',
        id,
      ]).catch(() => {})
      await rm(join(stateDir, id), { recursive: true, force: true })
    }
  }

  /** Removes every resource of this instance that belongs to no wanted container. */
  async #sweep(wanted: ReadonlySet<string>): Promise<void> {
    const names = new Set<string>()
    const n = this.#names
    for (const c of await readdir(n.runDir).catch(() => [] as string[])) names.add(c)
    for (const c of await readdir(n.logDir).catch(() => [] as string[])) names.add(c)
    if (this.#cgroups) {
      for (const path of await this.#cgroups.list(n.prefix)) {
        // `/<prefix>/<container>/…`, or `/<prefix>/_shims/<container>` (names.ts shimCgroup).
        const [, , first, second] = path.split('/')
        const c = first === SHIMS_CGROUP ? second : first
        if (c) names.add(c)
      }
    }
    if (this.kind === 'oci') {
      for (const c of await listContainerNetns(n.instance)) names.add(c)
    }
    const unwanted = [...names].filter((c) => !wanted.has(c) && !c.startsWith('_'))
    for (const c of unwanted) {
      this.#log.info({ container: c }, 'removing what is left of a container nobody wants')
      const pause = await readPid(join(n.containerDir(c), 'pause.pid'))
      await this.#removeResources(c, pause !== null && this.#cgroups === undefined ? pause : null)
    }
    if (wanted.size === 0) {
      await this.#cgroups?.remove(`/${n.prefix}`)
      await this.#dropCrunNamespace()
    }
    if (this.kind === 'oci') {
      await this.#deleteOciState((id) => {
        const parsed = n.parseOciId(id)
        return parsed !== undefined && !wanted.has(parsed.container)
      })
      const keep = new Set([...wanted].map((c) => vethName(n.instance, c)))
      for (const veth of await listKm1sVeths({ hostNetns: this.#init.hostNetns })) {
        const { name } = veth
        if (keep.has(name)) continue
        // Another agent of the same host (the lab) names its veths alike: only ours are in this namespace.
        await run('ip', [
          ...(this.#init.hostNetns ? ['-n', this.#init.hostNetns] : []),
          'link',
          'del',
          name,
        ]).catch(() => {})
      }
    }
  }

  // --- processes --------------------------------------------------------------------------------------

  #processCwd(ctr: Ctr, spec: ProcessSpec): string {
    if (spec.cwd !== '/') return spec.cwd
    return ctr.record.spec.artifactDir ?? '/'
  }

  #config(ctr: Ctr, spec: ProcessSpec, network?: string) {
    const { name } = ctr.record.spec
    const dir = this.#names.containerDir(name)
    const netns = network ?? `/run/netns/${netnsName(this.#names.instance, name)}`
    const pause = ctr.pausePid as number
    const args = existsSync(CATATONIT) ? [CATATONIT, '--', ...spec.args] : spec.args
    return ociConfig({
      container: name,
      process: spec.name,
      args,
      env: spec.env,
      cwd: spec.cwd,
      user: spec.user ?? { uid: DEFAULT_UID, gid: DEFAULT_GID },
      // One empty root per process: crun makes the mount points in it, and two cruns making them in a
      // shared one at the same time fail with "cannot mkdir `proc`: File exists" (seen).
      rootfs: join(this.#names.processDir(name, spec.name), 'rootfs'),
      hostname: ctr.record.spec.hostname ?? name,
      systemPaths: presentSystemPaths(),
      artifactDir: ctr.record.spec.artifactDir,
      files: {
        hosts: join(dir, 'hosts'),
        hostname: join(dir, 'hostname'),
        resolvConf: join(dir, 'resolv.conf'),
      },
      namespaces: { network: netns, uts: `/proc/${pause}/ns/uts`, ipc: `/proc/${pause}/ns/ipc` },
      cgroupsPath: `${this.#names.processCgroup(name, spec.name)}/oci`,
    })
  }

  /**
   * The config of a gated start (a new container): the network namespace by the pause's pid — it has no
   * name yet, and crun's wrapper, spawned early, has a private mount namespace that will never see the
   * name's mount (seen: "cannot setns `/run/netns/…`: Invalid argument") — and the start gate while the
   * pause still makes the network.
   */
  #gatedConfig(ctr: Ctr, spec: ProcessSpec, pause: number) {
    const config = this.#config(ctr, spec, `/proc/${pause}/ns/net`)
    return ctr.netGate === undefined ? config : withStartGate(config, ctr.netGate)
  }

  /** Where args[0] is on this host, as the container will see it; undefined when nothing is there. */
  #hostPath(ctr: Ctr, path: string): string | undefined {
    if (this.kind === 'process') return path
    const artifact = ctr.record.spec.artifactDir
    if (artifact !== undefined && (path === '/app' || path.startsWith('/app/'))) {
      return join(artifact, path.slice(4))
    }
    if (presentSystemPaths().some((p) => path === p || path.startsWith(`${p}/`))) return path
    return undefined
  }

  async #precheck(ctr: Ctr, spec: ProcessSpec): Promise<ExecutableProblem | undefined> {
    const program = spec.args[0] as string
    const user =
      spec.user ?? (this.kind === 'oci' ? { uid: DEFAULT_UID, gid: DEFAULT_GID } : { uid: 0, gid: 0 })
    const candidates = program.includes('/')
      ? [program.startsWith('/') ? program : join(spec.cwd, program)]
      : (spec.env.PATH ?? DEFAULT_PATH_ENV).split(':').map((d) => join(d, program))
    for (const candidate of candidates) {
      const host = this.#hostPath(ctr, candidate)
      if (host === undefined) continue
      const facts = await fileFacts(host)
      if (facts === undefined) continue
      return executableProblem(
        program,
        facts,
        this.kind === 'process' ? { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 } : user,
      )
    }
    return executableProblem(program, undefined, user)
  }

  /** Starts the process; a stop meanwhile waits for this start to finish, then stops what it started. */
  #startProcess(proc: Proc): Promise<void> {
    const start = this.#startProcessNow(proc).finally(() => {
      if (proc.starting === start) proc.starting = undefined
    })
    proc.starting = start
    return start
  }

  async #startProcessNow(proc: Proc): Promise<void> {
    if (this.#stopped || proc.stopping) return
    const ctr = this.#containers.get(proc.container)
    if (!ctr) return
    proc.state = 'starting'
    proc.nextStartAt = null
    proc.pid = null
    const dir = this.#names.processDir(proc.container, proc.spec.name)
    // A new container: the shim is spawned at once, before the pause (both spawns cost the agent's main
    // thread milliseconds, and the shim's chain — its exec, crun's wrapper, its cgroup moves — is the
    // longer), gated, to run crun once the namespaces exist (shim.ts). The config names them by the
    // pause's pid, known once it is spawned. Its directory is new: no files of an earlier start to remove.
    const gated = this.kind === 'oci' && ctr.fresh
    let early: ReturnType<typeof spawnShim> | undefined
    let committed = false
    try {
      let argv: string[]
      let env: Record<string, string>
      let cwd = '/'
      let cgroupProcs: string[] = []
      let kills = 0
      const cgroups = this.#cgroups as Cgroups
      const path = this.#names.processCgroup(proc.container, proc.spec.name)
      const shimPath = this.#names.shimCgroup(proc.container)
      const id = this.#names.ociId(proc.container, proc.spec.name)
      if (this.kind === 'oci') {
        const oci = this.#oci()
        const runArgv = [oci.binary as string, 'run', '--pid-file', shimFile(dir, 'pid'), '--bundle', dir, id]
        argv = [...oci.wrapper, ...runArgv]
        env = { PATH: DEFAULT_PATH_ENV }
        if (gated) {
          // The first gated shim forks the container's pause too (shim.ts): one spawn from the agent fewer.
          const request = ctr.pauseRequest
          ctr.pauseRequest = undefined
          // crun's shared mount namespace pays off for containers made beside others (a burst, a node
          // that runs some); a lone one keeps the per-run wrapper rather than make it on its critical path
          // (`unshare` and `umount`, ~4 ms) and drop it again with its container.
          const [shimDirs, pauseRequest, crunNs] = await Promise.all([
            cgroups.limitDirs(shimPath, SHIM_HIERARCHIES),
            request,
            this.#containers.size > 1 ? this.#useCrunNamespace() : undefined,
          ])
          cgroupProcs = shimDirs.map((d) => join(d, 'cgroup.procs'))
          let pause: Record<string, string> | undefined
          try {
            pause = pauseRequest && pauseEnv(pauseRequest)
          } catch {
            // A path the shim cannot pass on: #makeContainer spawns the pause itself.
          }
          proc.startedAt = Date.now()
          // The gate in the shim itself when crun needs no shell before it: no wrapper, or the mount
          // namespace made for it once (detect.ts makeCrunNamespace) instead of the hybrid wrapper's.
          const inline = crunNs !== undefined || oci.wrapper.length === 0
          const shim = spawnShim({
            dir,
            cgroupProcs,
            argv:
              crunNs !== undefined
                ? ['nsenter', `--mount=${crunNs}`, '--', ...runArgv]
                : inline
                  ? runArgv
                  : gatedCommand(oci.wrapper, dir, cgroupProcs, runArgv),
            env,
            cwd,
            gated: true,
            inline,
            ...(pause ? { pause } : {}),
          })
          // Only the shim that took the request forked one: another's spawn must not clear it.
          if (shim.pause !== undefined) ctr.forkedPause = shim.pause
          early = shim
          ctr.shimCgroup.then(shim.cgroupsReady, () => shim.release(false))
          ctr.shimSpawnedNow()
        }
      } else {
        // The inner sh records the pid of the command itself (it execs into it), for signals and exec.
        argv = ['/bin/sh', '-c', 'echo $$ > "$0" && exec "$@"', shimFile(dir, 'pid'), ...proc.spec.args]
        env = { PATH: DEFAULT_PATH_ENV, ...proc.spec.env }
        cwd = this.#processCwd(ctr, proc.spec)
      }
      const [problem] = await Promise.all([
        this.#precheck(ctr, proc.spec),
        ...(gated
          ? []
          : [
              rm(shimFile(dir, 'exit'), { force: true }),
              rm(shimFile(dir, 'pid'), { force: true }),
              rm(shimFile(dir, 'shimPid'), { force: true }),
            ]),
        ctr.prepared,
      ])
      if (problem) {
        const exit: ExitInfo = {
          reason: problem.reason,
          code: null,
          signal: null,
          message: problem.message,
          at: new Date().toISOString(),
        }
        proc.log.note(`km1s: cannot start ${proc.spec.name}: ${problem.message}`)
        this.#afterExit(proc, exit, 0)
        return
      }
      let pauseInConfig: number | null = null
      let configGated = false
      if (this.kind === 'oci') {
        if (!proc.cgroupReady) {
          await Promise.all([
            cgroups.ensure(path, proc.spec.limits),
            cgroups.ensure(shimPath, SHIM_LIMITS, SHIM_HIERARCHIES),
          ])
          proc.cgroupReady = true
        }
        // A new container's process has no OOM kills, no memory peak and no OCI state yet.
        const [oom, shimDirs] = await Promise.all([
          gated ? 0 : cgroups.oomKills(path),
          cgroups.limitDirs(shimPath, SHIM_HIERARCHIES),
          gated ? undefined : resetPeak(cgroups, path),
          gated ? undefined : this.#deleteOciState((other) => other === id),
        ])
        kills = oom
        cgroupProcs = shimDirs.map((d) => join(d, 'cgroup.procs'))
        if (!gated) {
          await proc.io
          if (ctr.pausePid === null || !processAlive(ctr.pausePid)) {
            const pause = await this.#ensurePause(proc.container, ctr.record.spec.hostname ?? proc.container)
            await pause.ready
            ctr.pausePid = pause.pid
          }
        }
        pauseInConfig = ctr.pausePid
        configGated = ctr.netGate !== undefined
        if (gated && pauseInConfig === null) {
          // The fast path's pause could not be spawned: the fallback makes another; start again then.
          ctr.stranded = true
          return
        }
        const config = gated
          ? this.#gatedConfig(ctr, proc.spec, pauseInConfig as number)
          : this.#config(ctr, proc.spec)
        await writeFile(join(dir, 'config.json'), JSON.stringify(config))
        proc.oomBaseline = kills
      } else {
        await proc.io
      }
      if (proc.stopping || this.#stopped) return
      let shim: ReturnType<typeof spawnShim>
      if (early !== undefined) {
        shim = early
      } else {
        proc.startedAt = Date.now()
        try {
          shim = spawnShim({ dir, cgroupProcs, argv, env, cwd })
        } catch (err) {
          this.#afterExit(
            proc,
            {
              reason: 'start-failed',
              code: null,
              signal: null,
              message: `the supervisor could not start: ${err instanceof Error ? err.message : String(err)}`,
              at: new Date().toISOString(),
            },
            0,
          )
          return
        }
      }
      committed = true
      proc.shimPid = shim.pid
      proc.ended = shim.exited
      proc.handled = shim.exited.then(() => this.#onShimEnded(proc, shim.pid)).catch(this.#exitFailed)
      if (gated) {
        // Should the fast path have given way to the fallback, the config names a pause that is gone: the
        // shim ends without running anything and #bringUp starts the process again.
        proc.io.then(
          async () => {
            const current = ctr.pausePid === pauseInConfig
            if (!current) ctr.stranded = true
            // The network may be made by now (many creates at once): then no hook, one exec fewer.
            if (current && configGated && ctr.netGate === undefined) {
              const config = this.#gatedConfig(ctr, proc.spec, pauseInConfig as number)
              await writeFile(join(dir, 'config.json'), JSON.stringify(config)).catch(() => {})
            }
            shim.release(current && !proc.stopping && !this.#stopped)
          },
          () => shim.release(false),
        )
      }
      // Running once the runtime wrote the pid file, or the shim already ended (then #onShimEnded tells why).
      const pid = await waitForPidFile(shimFile(dir, 'pid'), shim.exited, START_WAIT_MS)
      if (pid !== null && proc.shimPid === shim.pid && proc.state === 'starting') {
        proc.pid = pid
        proc.state = 'running'
        this.#changed(proc.container)
      }
    } finally {
      // A gated shim that is not to run (a bad program, a stop meanwhile, a failure) ends without it.
      if (early !== undefined && !committed) early.release(false)
      if (gated) ctr.shimSpawnedNow()
    }
  }

  /** After an agent restart: a shim still running is watched again; one that ended tells how. */
  async #adopt(proc: Proc): Promise<boolean> {
    const dir = this.#names.processDir(proc.container, proc.spec.name)
    const shim = await readPid(shimFile(dir, 'shimPid'))
    if (shim !== null && isShimOf(shim, dir)) {
      proc.shimPid = shim
      proc.pid = await readPid(shimFile(dir, 'pid'))
      proc.state = proc.pid === null ? 'starting' : 'running'
      proc.startedAt = Date.now()
      if (this.#cgroups) {
        const path = this.#names.processCgroup(proc.container, proc.spec.name)
        proc.oomBaseline = await this.#cgroups.oomKills(path)
      }
      proc.ended = waitForExit(shim, dir, this.#init.adoptPollMs ?? 250)
      proc.handled = proc.ended.then(() => this.#onShimEnded(proc, shim)).catch(this.#exitFailed)
      this.#log.info(
        { container: proc.container, process: proc.spec.name, pid: proc.pid },
        'adopted a running process',
      )
      return true
    }
    const code = await readExitCode(dir)
    if (code !== undefined) {
      // It ended while no agent was watching: record it and let the policy decide.
      await this.#finishExit(proc, code)
      return true
    }
    // Neither running nor ended: a start cut short by a crash. Whatever it left is killed first.
    if (this.#cgroups) {
      await this.#cgroups.remove(this.#names.processCgroup(proc.container, proc.spec.name))
      proc.cgroupReady = false
    }
    return false
  }

  readonly #exitFailed = (err: unknown): void => {
    this.#log.error({ err: errorMessage(err) }, 'recording the end of a process failed')
  }

  async #onShimEnded(proc: Proc, shimPid: number): Promise<void> {
    if (proc.shimPid !== shimPid || this.#stopped) return
    const dir = this.#names.processDir(proc.container, proc.spec.name)
    await this.#finishExit(proc, (await readExitCode(dir)) ?? null)
  }

  async #finishExit(proc: Proc, code: number | null): Promise<void> {
    let oomKilled = false
    if (this.#cgroups && this.kind === 'oci') {
      const path = this.#names.processCgroup(proc.container, proc.spec.name)
      const kills = await this.#cgroups.oomKills(path)
      // cgroup v2 counts OOM kills in the parent, which outlives crun's leaf. v1 counts them only in the
      // leaf, which crun deletes as the process ends (docs/runtime.md, "Cgroups"); there, SIGKILL with the
      // memory peak at the limit is the sign (measured: the parent's failcnt stays 0, its peak = limit).
      const peak = (await this.#cgroups.memoryPeak(path)) ?? 0
      const atLimit = peak >= proc.spec.limits.memoryBytes - 64 * 1024
      oomKilled = kills > proc.oomBaseline || (code === 128 + 9 && atLimit)
      proc.oomBaseline = kills
    }
    const exit = classifyExit({
      code,
      stoppedByUs: proc.stopping,
      oomKilled,
      memoryLimit: proc.spec.limits.memoryBytes,
      at: new Date(),
    })
    proc.shimPid = null
    proc.pid = null
    proc.log.note(`km1s: ${proc.spec.name} ${exit.message}`)
    this.#afterExit(proc, exit, Date.now() - proc.startedAt)
  }

  #afterExit(proc: Proc, exit: ExitInfo, ranForMs: number): void {
    proc.lastExit = exit
    proc.pid = null
    if (proc.stopping || this.#stopped || !shouldRestart(proc.spec.restart, exit)) {
      proc.state = 'exited'
      this.#changed(proc.container)
      return
    }
    if (ranForMs >= BACKOFF_RESET_AFTER_MS) proc.failures = 0
    const delay = backoffDelay(proc.failures)
    proc.failures++
    proc.state = 'backoff'
    proc.nextStartAt = Date.now() + delay
    this.#changed(proc.container)
    this.#log.info(
      { container: proc.container, process: proc.spec.name, reason: exit.reason, delayMs: delay },
      'process ended; restarting after a back-off',
    )
    proc.timer = setTimeout(() => {
      proc.timer = undefined
      proc.restarts++
      void this.#startProcess(proc).catch((err) => {
        this.#log.error({ err: String(err), process: proc.spec.name }, 'restart failed')
      })
    }, delay)
    proc.timer.unref()
  }

  /** TERM, the process's grace, then KILL; resolves when its shim has ended. */
  async #stopProcess(proc: Proc): Promise<void> {
    proc.stopping = true
    clearTimeout(proc.timer)
    proc.timer = undefined
    // A restart in flight (its timer fired, its shim not yet spawned) would otherwise spawn one after
    // the stop, into a directory being removed (seen: ENOTEMPTY, and a shim nobody watched).
    await proc.starting?.catch(() => {})
    const ended = proc.ended
    if (proc.shimPid === null || ended === undefined) {
      proc.state = 'exited'
      return
    }
    proc.state = 'stopping'
    const dir = this.#names.processDir(proc.container, proc.spec.name)
    const pid = proc.pid ?? (await readPid(shimFile(dir, 'pid')))
    if (pid !== null) killQuietly(pid, 'SIGTERM')
    // A PID 1 drops a signal it has no handler for yet: a TERM that arrives while crun still prepares the
    // container, or before catatonit set up its handlers, is lost (seen: a stop right after a create
    // waited the whole grace). A young process gets it again, a few times.
    const young = Date.now() - proc.startedAt < 2_000
    // Early and often: the create returns as soon as crun wrote the pid file, before catatonit has its
    // handlers (a stop right after a create waited 100 ms for the first resend).
    const resend = young
      ? [5, 20, 50, 100, 400].map((ms) =>
          setTimeout(() => {
            if (pid !== null && proc.shimPid !== null) killQuietly(pid, 'SIGTERM')
          }, ms),
        )
      : []
    const graceful = await Promise.race([
      ended.then(() => true),
      sleep(proc.spec.stopGraceMs).then(() => false),
    ])
    for (const timer of resend) clearTimeout(timer)
    if (!graceful) {
      if (pid !== null) killQuietly(pid, 'SIGKILL')
      if (this.#cgroups) {
        for (const p of await this.#cgroups.procs(
          this.#names.processCgroup(proc.container, proc.spec.name),
        )) {
          killQuietly(p, 'SIGKILL')
        }
      }
      await Promise.race([ended, sleep(2_000)])
    }
    proc.state = 'exited'
  }

  #status(ctr: Ctr): ContainerStatus {
    const processes: ProcessStatus[] = ctr.record.spec.processes.map((ps) => {
      const p = ctr.procs.get(ps.name)
      return {
        name: ps.name,
        state: p?.state ?? 'starting',
        pid: p?.pid ?? null,
        restarts: p?.restarts ?? 0,
        lastExit: p?.lastExit ?? null,
        nextStartAt: p?.nextStartAt ? new Date(p.nextStartAt).toISOString() : null,
      }
    })
    const running = processes.filter((p) => p.state === 'running').length
    const state: ContainerStatus['state'] =
      ctr.state !== 'running'
        ? ctr.state
        : running === processes.length
          ? 'running'
          : processes.every((p) => p.state === 'exited')
            ? 'exited'
            : 'degraded'
    return {
      name: ctr.record.spec.name,
      state,
      ip: ctr.record.ip,
      processes,
      error: ctr.error,
      createdAt: ctr.record.createdAt,
    }
  }
}

function newCtr(record: ContainerRecord): Ctr {
  return {
    record,
    state: 'creating',
    error: null,
    procs: new Map(),
    pausePid: null,
    pauseRequest: undefined,
    forkedPause: undefined,
    pauseReady: Promise.resolve(),
    network: Promise.resolve(),
    netGate: undefined,
    stranded: false,
    fresh: false,
    shimSpawned: Promise.resolve(),
    shimSpawnedNow: () => {},
    shimCgroup: Promise.resolve(),
    prepared: Promise.resolve(),
    made: Promise.resolve(),
    files: Promise.resolve(),
    removed: new AbortController(),
  }
}

// --- small host helpers -----------------------------------------------------------------------------------

function sleep(ms: number, unref = false): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms)
    if (unref) timer.unref()
  })
}

function killQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal)
  } catch {
    // gone already
  }
}

async function readPid(path: string): Promise<number | null> {
  try {
    const text = (await readFile(path, 'utf8')).trim()
    const pid = Number(text)
    return Number.isInteger(pid) && pid > 1 ? pid : null
  } catch {
    return null
  }
}

async function readExitCode(dir: string): Promise<number | undefined> {
  try {
    const text = (await readFile(shimFile(dir, 'exit'), 'utf8')).trim()
    const code = Number(text)
    return text !== '' && Number.isInteger(code) && code >= 0 && code <= 255 ? code : undefined
  } catch {
    return undefined
  }
}

/** The pid is our shim for `dir`, not a stranger that got the pid after it: its argv names the dir. */
function isShimOf(pid: number, dir: string): boolean {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
    return argv.includes('km1s-shim') && argv.includes(dir)
  } catch {
    return false
  }
}

/** The pid's argv names `dir` (a pause or shim still in its shell), not a stranger that got the pid. */
function isArgvOf(pid: number, dir: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(dir)
  } catch {
    return false
  }
}

/** The pid is the pause process of this container: catatonit in the container's `_pause` cgroup. */
function isPauseOf(pid: number, cgroup: string): boolean {
  try {
    if (readFileSync(`/proc/${pid}/comm`, 'utf8').trim() !== 'catatonit') return false
    return readFileSync(`/proc/${pid}/cgroup`, 'utf8')
      .split('\n')
      .some((line) => line.endsWith(`:${cgroup}`))
  } catch {
    return false
  }
}

/** v1: the peak memory watermark starts again at each start (0 resets it); v2 keeps counting OOM kills. */
async function resetPeak(cgroups: Cgroups, path: string): Promise<void> {
  for (const dir of await cgroups.limitDirs(path)) {
    await writeFile(join(dir, 'memory.max_usage_in_bytes'), '0').catch(() => {})
  }
}

function waitForExit(pid: number, dir: string, pollMs: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setInterval(() => {
      if (!isShimOf(pid, dir)) {
        clearInterval(timer)
        resolve()
      }
    }, pollMs)
    timer.unref()
  })
}

async function fileFacts(path: string): Promise<FileFacts | undefined> {
  try {
    const st = await stat(path)
    const kind = st.isFile() ? 'file' : st.isDirectory() ? 'directory' : 'other'
    let head = new Uint8Array(0)
    if (kind === 'file') {
      const fh = await open(path, 'r')
      try {
        const buf = new Uint8Array(20)
        const { bytesRead } = await fh.read(buf, 0, 20, 0)
        head = buf.subarray(0, bytesRead)
      } finally {
        await fh.close()
      }
    }
    return { kind, mode: st.mode, uid: st.uid, gid: st.gid, head }
  } catch {
    return undefined
  }
}

function startTimeout(): Promise<never> {
  const timeout = sleep(START_WAIT_MS, true).then((): never => {
    throw new Error('the pause process did not start')
  })
  timeout.catch(() => {})
  return timeout
}
