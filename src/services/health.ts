// Health checks of this node's replicas: tcp (a connection), http (a GET answered 2xx/3xx) or exec (a
// command in the container exits 0), every interval with a timeout. A replica starts unhealthy and
// serves after `healthyAfter` successes in a row; it leaves its service after `unhealthyAfter` failures
// in a row and is made again after `restartAfter`. The verdict goes into the status record through the
// scheduler's `isHealthy` seam, so DNS, the load balancer and rolling updates all follow it.
import { connect } from 'node:net'
import { errorMessage } from '../common/errors.ts'
import { type GridTimer, onGrid } from '../common/grid.ts'
// node:http through common/http.ts, never an ESM import: that loads Node's bundled undici (~5 MB RSS).
import { http } from '../common/http.ts'
import type { Logger } from '../common/logger.ts'
import { startExec } from '../runtime/exec.ts'
import type { ContainerStatus, Runtime } from '../runtime/types.ts'
import { parseReplicaName } from '../scheduler/workload.ts'
import type { HealthValue, WorkloadValue } from '../state/record.ts'

export interface HealthState {
  healthy: boolean
  successes: number
  failures: number
}

export const INITIAL_HEALTH: HealthState = { healthy: false, successes: 0, failures: 0 }

/** One probe result applied to a replica's health (pure). `restart`: make the replica again now. */
export function stepHealth(
  s: HealthState,
  ok: boolean,
  spec: Pick<HealthValue, 'healthyAfter' | 'unhealthyAfter' | 'restartAfter'>,
): { state: HealthState; restart: boolean } {
  if (ok) {
    const successes = s.successes + 1
    return {
      state: { healthy: s.healthy || successes >= spec.healthyAfter, successes, failures: 0 },
      restart: false,
    }
  }
  const failures = s.failures + 1
  const healthy = s.healthy && failures < spec.unhealthyAfter
  const restart = spec.restartAfter > 0 && failures >= spec.restartAfter
  return { state: { healthy, successes: 0, failures: restart ? 0 : failures }, restart }
}

/** Runs one probe; resolves true (healthy) or false, never rejects, never outlives `timeoutMs` by much. */
export async function probe(
  h: HealthValue,
  target: { ip: string; container: string },
  runtime: Pick<Runtime, 'prepareExec'> | undefined,
  log: Logger,
): Promise<boolean> {
  if (h.kind === 'tcp') return probeTcp(target.ip, h.port as number, h.timeoutMs)
  if (h.kind === 'http') return probeHttp(target.ip, h.port as number, h.path ?? '/', h.timeoutMs)
  if (!runtime) return false
  try {
    const prepared = await runtime.prepareExec({
      container: target.container,
      args: h.command as string[],
      tty: false,
    })
    const p = startExec(prepared, { tty: false, log })
    p.stdin.end()
    p.stdout.resume()
    p.stderr?.resume()
    const timer = setTimeout(() => p.kill('SIGKILL'), h.timeoutMs)
    try {
      const exit = await p.exited
      return exit.code === 0 && exit.signal === null
    } finally {
      clearTimeout(timer)
    }
  } catch (err) {
    log.debug({ container: target.container, err: errorMessage(err) }, 'exec health check failed')
    return false
  }
}

function probeTcp(ip: string, port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: ip, port, timeout: timeoutMs })
    const done = (ok: boolean) => {
      socket.destroy()
      resolve(ok)
    }
    socket.once('connect', () => done(true))
    socket.once('timeout', () => done(false))
    socket.once('error', () => done(false))
  })
}

function probeHttp(ip: string, port: number, path: string, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    let settled = false
    const done = (ok: boolean) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      req.destroy()
      resolve(ok)
    }
    const req = http.request(
      { host: ip, port, path, method: 'GET', agent: false, headers: { 'user-agent': 'km1s-health' } },
      (res) => {
        const code = res.statusCode ?? 0
        res.resume()
        done(code >= 200 && code < 400)
      },
    )
    const timer = setTimeout(() => done(false), timeoutMs)
    req.once('error', () => done(false))
    req.end()
  })
}

export interface HealthMonitorInit {
  runtime: Runtime | undefined
  /** The workload a replica belongs to (the store's record), or undefined. */
  workload(name: string): WorkloadValue | undefined
  /** A replica's verdict changed: the scheduler writes its status again. */
  onChange(container: string): void
  /** `restartAfter` failures in a row: the scheduler makes the replica again. */
  restart(container: string, why: string): void
  logger: Logger
  /** How often the set of probed replicas is compared with the runtime's containers. */
  syncMs?: number
}

interface Tracked {
  /** A container made again (new createdAt) starts over. */
  createdAt: string
  /**
   * The check as it was when the container was first seen: a changed check means a new spec, which a
   * rolling update brings with new containers; the old ones keep theirs (and their verdicts) till then.
   */
  health: HealthValue
  state: HealthState
  timer: NodeJS.Timeout | undefined
}

export interface HealthStats {
  probes: number
  failures: number
  restarts: number
  tracked: number
}

/** Probes every running replica on this node whose workload has a health check. */
export class HealthMonitor {
  readonly #init: HealthMonitorInit
  readonly #log: Logger
  readonly #tracked = new Map<string, Tracked>()
  readonly #stats = { probes: 0, failures: 0, restarts: 0 }
  #startedAt = 0
  #timer: GridTimer | undefined
  #unsubscribe: (() => void) | undefined
  #running = false

  constructor(init: HealthMonitorInit) {
    this.#init = init
    this.#log = init.logger.child({ subsystem: 'health' })
  }

  start(): void {
    if (this.#running) return
    this.#running = true
    this.#startedAt = Date.now()
    this.#unsubscribe = this.#init.runtime?.onChange(() => this.sync())
    this.#timer = onGrid(this.#init.syncMs ?? 500, () => this.sync())
    this.sync()
  }

  stop(): void {
    this.#running = false
    this.#timer?.stop()
    this.#unsubscribe?.()
    for (const t of this.#tracked.values()) clearTimeout(t.timer)
    this.#tracked.clear()
  }

  stats(): HealthStats {
    return { ...this.#stats, tracked: this.#tracked.size }
  }

  /** The scheduler's seam: a replica without a check is healthy when running; one with a check, once it passed. */
  isHealthy(container: string): boolean {
    const parsed = parseReplicaName(container)
    const w = parsed && this.#init.workload(parsed.workload)
    if (!w?.health) return true
    // The verdict must be this container's: a replica made again under the same name has a new
    // createdAt, and the old one's verdict must not vouch for it before the next sync.
    const createdAt = this.#init.runtime?.get(container)?.createdAt
    if (this.#tracked.get(container)?.createdAt !== createdAt) this.sync()
    const t = this.#tracked.get(container)
    return t !== undefined && t.createdAt === createdAt && t.state.healthy
  }

  /** Starts probing new running replicas, stops probing gone ones. */
  sync(): void {
    if (!this.#running) return
    const seen = new Set<string>()
    for (const c of this.#init.runtime?.list() ?? []) {
      const parsed = parseReplicaName(c.name)
      const w = parsed && this.#init.workload(parsed.workload)
      if (!w?.health || c.state !== 'running') continue
      seen.add(c.name)
      const t = this.#tracked.get(c.name)
      if (t && t.createdAt === c.createdAt) continue
      if (t) clearTimeout(t.timer)
      // A new replica serves once it passed; one that ran before this agent started keeps serving until
      // its checks say otherwise, so an agent restart does not take every replica out at once. (Not "older
      // than its check": this node hears of a new check later than the scheduler may make a replica.)
      const adopted = Date.parse(c.createdAt) < this.#startedAt
      const fresh: Tracked = {
        createdAt: c.createdAt,
        health: w.health,
        state: { ...INITIAL_HEALTH, healthy: adopted },
        timer: undefined,
      }
      this.#tracked.set(c.name, fresh)
      if ((t?.state.healthy ?? false) !== adopted) this.#init.onChange(c.name)
      // The first probe soon after start: a new replica should not wait a whole interval to serve.
      fresh.timer = setTimeout(() => this.#probe(c.name, fresh), Math.min(200, w.health.intervalMs))
    }
    for (const [name, t] of this.#tracked) {
      if (seen.has(name)) continue
      clearTimeout(t.timer)
      this.#tracked.delete(name)
    }
  }

  async #probe(name: string, t: Tracked): Promise<void> {
    if (!this.#running || this.#tracked.get(name) !== t) return
    const c: ContainerStatus | undefined = this.#init.runtime?.get(name)
    const h = t.health
    if (!c) return
    const started = Date.now()
    const ok = await probe(h, { ip: c.ip ?? '127.0.0.1', container: name }, this.#init.runtime, this.#log)
    if (this.#tracked.get(name) !== t) return
    this.#stats.probes++
    if (!ok) this.#stats.failures++
    const before = t.state.healthy
    const { state, restart } = stepHealth(t.state, ok, h)
    t.state = state
    if (state.healthy !== before) {
      this.#log.info(
        { container: name, healthy: state.healthy },
        state.healthy ? 'a replica is healthy' : 'a replica is unhealthy',
      )
      this.#init.onChange(name)
    }
    if (restart) {
      this.#stats.restarts++
      this.#log.warn(
        { container: name, failures: h.restartAfter },
        'a replica failed its health check; making it again',
      )
      this.#init.restart(name, `failed its ${h.kind} health check ${h.restartAfter} times in a row`)
    }
    t.timer = setTimeout(() => this.#probe(name, t), Math.max(0, h.intervalMs - (Date.now() - started)))
  }
}
