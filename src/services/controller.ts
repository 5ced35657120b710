// Keeps the `service/` records in line with the workloads, on every node: the same pure plan
// (allocate.ts) over the same records gives the same writes everywhere, so there is no leader to elect
// and a split heals by itself (the tie-break moves exactly one of two services that took one IP).
import { errorMessage } from '../common/errors.ts'
import { type GridTimer, onGrid } from '../common/grid.ts'
import type { Logger } from '../common/logger.ts'
import type { JsonValue, SignedRecord, StoreChange, WorkloadValue } from '../state/index.ts'
import { planServices, type ServicePlan } from './allocate.ts'
import { type ServiceEndpoints, serviceEndpoints } from './endpoints.ts'

export interface ServiceStore {
  list(prefix: string): SignedRecord[]
  put(key: string, value: JsonValue, opts?: { durable?: boolean }): Promise<SignedRecord>
  delete(key: string, opts?: { durable?: boolean }): Promise<SignedRecord>
  onChange(fn: (change: StoreChange) => void): () => void
}

/**
 * Another node's write (a `km1s run` there) is followed after this long, so that its own service write
 * arrives first and this node has nothing to add; a local change is followed at once.
 */
const REMOTE_DELAY_MS = 300
const LOCAL_DELAY_MS = 20
/** A failed write is tried again at the latest this long after; the plan is cheap. */
const REPAIR_MS = 10_000

export interface ServicesInit {
  store: ServiceStore
  logger: Logger
  now?: () => number
}

export class Services {
  readonly #store: ServiceStore
  readonly #log: Logger
  readonly #now: () => number
  #timer: NodeJS.Timeout | undefined
  #running: Promise<void> | undefined
  #again = false
  #unwatch: (() => void) | undefined
  #repair: GridTimer | undefined
  #writes = 0

  constructor(init: ServicesInit) {
    this.#store = init.store
    this.#log = init.logger.child({ subsystem: 'services' })
    this.#now = init.now ?? Date.now
  }

  start(): void {
    this.#unwatch = this.#store.onChange((c) => {
      if (c.key.startsWith('workload/') || c.key.startsWith('service/'))
        this.#schedule(c.origin === 'local' ? LOCAL_DELAY_MS : REMOTE_DELAY_MS)
    })
    this.#schedule(REMOTE_DELAY_MS)
    this.#repair = onGrid(REPAIR_MS, () => this.#schedule(0))
  }

  async stop(): Promise<void> {
    this.#unwatch?.()
    this.#unwatch = undefined
    clearTimeout(this.#timer)
    this.#repair?.stop()
    await this.#running?.catch(() => {})
  }

  /** The plan over the current records (the API applies it at once for the workload it wrote). */
  plan(): ServicePlan {
    const workloads = this.#store.list('workload/').map((r) => r.value as WorkloadValue)
    const stored = new Map(this.#store.list('service/').map((r) => [r.key.slice(8), r.value as unknown]))
    return planServices(workloads, stored, this.#now())
  }

  /** Writes what the plan says; `durable` for a user's request (on disk before the API answers). */
  async reconcile(durable = false): Promise<void> {
    const { put, remove } = this.plan()
    for (const [name, value] of put) {
      this.#log.info({ service: name, ip: value.ip, ports: value.ports }, 'writing a service')
      await this.#store.put(`service/${name}`, value, { durable })
      this.#writes++
    }
    for (const name of remove) {
      this.#log.info({ service: name }, 'removing a service no workload names')
      await this.#store.delete(`service/${name}`, { durable })
      this.#writes++
    }
  }

  /** Every service with its serving endpoints (km1s services). */
  list(): ServiceEndpoints[] {
    return serviceEndpoints([...this.#store.list('service/'), ...this.#store.list('status/')])
  }

  get writes(): number {
    return this.#writes
  }

  #schedule(delay: number): void {
    if (this.#unwatch === undefined) return
    if (this.#running) {
      this.#again = true
      return
    }
    clearTimeout(this.#timer)
    this.#timer = setTimeout(() => {
      this.#running = this.reconcile()
        .catch((err) => this.#log.warn({ err: errorMessage(err) }, 'reconciling services failed'))
        .finally(() => {
          this.#running = undefined
          if (this.#again) {
            this.#again = false
            this.#schedule(LOCAL_DELAY_MS)
          }
        })
    }, delay)
    this.#timer.unref()
  }
}
